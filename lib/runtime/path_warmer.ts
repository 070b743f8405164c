// Keeps the tunnel's data path warm between the packets of a slow exchange (a ping every 10 ms).
// Issue 11: one ping's packet cost ~60-90 µs of JS work per step after the loop slept, against
// 4-6 µs in a bulk transfer; what had gone cold was the code and data of the path (V8 code,
// inline caches, libsodium), not the wakeup. So while a packet loop is hot, each wake that found
// nothing runs one dummy packet through the same code: seal (DataPath.fromTun), open in place
// and translate (DataPath.fromNetwork), without any system call.
//
// The dummy tunnel never touches a real one: its own session pair from fresh random roots and a
// random tunnel id, its own peer table, and an io whose sendUdp and writeTun only hand the bytes
// back here. Nothing it seals can reach a socket, and no real session's key or counter is used.

import { DataPath, newPeer, type TunnelIo } from "../core/data_path.ts";
import { TunnelSession } from "../core/session.ts";
import { DropCounters } from "../core/log.ts";
import { TUNNEL_OVERHEAD } from "../core/constants.ts";

/** Dummy packets per session pair before a fresh pair replaces it (its keys erased). */
const PACKETS_PER_PAIR = 4096;

const NEAR = 0x0a000001;
const FAR = 0x0a000002;
const LOOPBACK = 0x7f000001;

/** An 84-byte ICMP echo request, the size of a default ping. */
function echoRequest(): Uint8Array {
  const p = new Uint8Array(84);
  p.set([0x45, 0, 0, 84, 0, 1, 0x40, 0, 64, 1]);
  const v = new DataView(p.buffer);
  v.setUint32(12, NEAR);
  v.setUint32(16, FAR);
  p[20] = 8; // echo request
  for (let i = 28; i < p.length; i++) p[i] = i;
  return p;
}

/**
 * A warm-up for PacketLoopOptions.warm (pass `warm`): one dummy packet sealed and opened
 * through DataPath, on the translate branch the real path takes (`finishesChecksums` as the TUN
 * device's).
 */
export class DataPathWarmer {
  /** Dummy packets that went all the way through (sealed, opened, written). */
  delivered = 0;
  readonly #template = echoRequest();
  readonly #packet = new Uint8Array(this.#template.length);
  readonly #slot = new Uint8Array(this.#template.length + TUNNEL_OVERHEAD);
  #wire: Uint8Array | null = null;
  readonly #txIo: TunnelIo;
  readonly #rxIo: TunnelIo;
  #tx: DataPath | null = null;
  #rx: DataPath | null = null;
  #pair: TunnelSession[] = [];
  #used = 0;

  constructor(finishesChecksums: boolean) {
    this.#txIo = {
      sendUdp: (d) => {
        this.#wire = d;
        return true;
      },
      writeTun: () => true,
      udpBuffer: () => this.#slot,
    };
    this.#rxIo = {
      sendUdp: () => true,
      writeTun: () => {
        this.delivered++;
        return true;
      },
      finishesChecksums,
    };
  }

  readonly warm = (): void => {
    if (this.#tx === null || this.#used >= PACKETS_PER_PAIR) this.#renew();
    this.#used++;
    this.#packet.set(this.#template);
    this.#wire = null;
    this.#tx!.fromTun(this.#packet, 0); // time 0 throughout: the pair never leaves epoch 0
    if (this.#wire !== null) this.#rx!.fromNetwork(this.#wire, LOOPBACK, 1, 0);
  };

  /** Erases the dummy pair's keys. */
  close(): void {
    for (const s of this.#pair) s.close();
    this.#pair = [];
    this.#tx = this.#rx = null;
  }

  #renew(): void {
    this.close();
    const tid = crypto.getRandomValues(new Uint8Array(32));
    const a = crypto.getRandomValues(new Uint8Array(32));
    const b = crypto.getRandomValues(new Uint8Array(32));
    // create() takes over and erases the roots it is given.
    this.#pair = [
      TunnelSession.create(tid, a.slice(), b.slice(), 0),
      TunnelSession.create(tid, b, a, 0),
    ];
    const drops = new DropCounters();
    this.#tx = new DataPath(this.#txIo, drops, { deliverTo: FAR, roaming: false });
    this.#rx = new DataPath(this.#rxIo, drops, { deliverTo: FAR, roaming: false });
    this.#tx.peers.add(newPeer(this.#pair[0], FAR, LOOPBACK, 1, 0));
    this.#rx.peers.add(newPeer(this.#pair[1], NEAR, LOOPBACK, 1, 0));
    this.#used = 0;
  }
}
