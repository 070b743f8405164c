// Our server device and any number of our client devices in one process, joined by an
// in-memory network that every datagram crosses: it records the key of every tunnel packet a
// device seals (KeyLedger), keeps what clients sent for an attacker to replay, and can lose,
// duplicate and reorder. Real keys, real KEMs (the crypto worker), real handshakes; the clock
// is the test's. The server can be restarted (same long-term keys, fresh everything else, as
// a daemon restart).

import assert from "node:assert/strict";
import { fixture } from "../fixtures.ts";
import { ClientDevice, type KeyChannel } from "../../lib/client/device.ts";
import { ServerDevice } from "../../lib/server/device.ts";
import { CryptoPool } from "../../lib/runtime/crypto_pool.ts";
import { EphemeralKeyStore } from "../../lib/core/ephemeral.ts";
import { CookieKeyring } from "../../lib/core/cookie.ts";
import { KeyTree } from "../../lib/core/keytree.ts";
import { answerKeyRequest } from "../../lib/core/keyserver.ts";
import { x25519PublicKey } from "../../lib/core/crypto.ts";
import { DropCounters, type Logger } from "../../lib/core/log.ts";
import { internetChecksum, ipv4ToNumber, pseudoHeaderSum } from "../../lib/core/ip.ts";
import { KeyLedger } from "./key_ledger.ts";
import { InThreadResponder } from "./in_thread_responder.ts";
import { Prng } from "./prng.ts";
import { StderrLogger } from "../../lib/runtime/log.ts";

export const SERVER_HOST = ipv4ToNumber("198.18.0.1");
export const ATTACKER_HOST = ipv4ToNumber("198.18.0.66");
const CLIENT_TUN = ipv4ToNumber("10.43.0.1");
let tree: KeyTree | undefined;

/** What the wire does to each datagram; all zero by default. */
export interface Faults {
  loss: number;
  duplicate: number;
  /** Chance a datagram is held back behind the next one. */
  reorder: number;
}

export class TestClock {
  mono = 1000;
  wall = 1_700_000_000;
  advance(s: number): void {
    this.mono += s;
    this.wall += s;
  }
}

/** A UDP/IPv4 packet with correct checksums. */
export function udpPacket(
  src: number,
  dst: number,
  payload: Uint8Array,
  ports: [number, number] = [5000, 6000],
): Uint8Array {
  const p = new Uint8Array(28 + payload.length);
  const v = new DataView(p.buffer);
  p[0] = 0x45;
  v.setUint16(2, p.length);
  p[8] = 64;
  p[9] = 17;
  v.setUint32(12, src);
  v.setUint32(16, dst);
  v.setUint16(10, internetChecksum(p, 0, 20));
  v.setUint16(20, ports[0]);
  v.setUint16(22, ports[1]);
  v.setUint16(24, 8 + payload.length);
  p.set(payload, 28);
  v.setUint16(
    26,
    internetChecksum(p, 20, p.length, pseudoHeaderSum(src, dst, 17, 8 + payload.length)) || 0xffff,
  );
  return p;
}

export function payloadText(packet: Uint8Array): string {
  return new TextDecoder().decode(packet.subarray(28));
}

export interface NetClient {
  host: number;
  device: ClientDevice;
  tun: Uint8Array[];
  internal?: number;
}

export class DeviceNet {
  readonly ledger = new KeyLedger();
  /** Every datagram a client sent to the server, as an attacker on the path records them. */
  readonly captured: Uint8Array[] = [];
  /** Every datagram the server sent to a client. */
  readonly capturedFromServer: Uint8Array[] = [];
  readonly clients: NetClient[] = [];
  faults: Faults = { loss: 0, duplicate: 0, reorder: 0 };
  server!: ServerDevice;
  serverTun: Uint8Array[] = [];
  restarts = 0;
  /** Drop counts and totals of servers before the last restart. */
  private readonly pastDrops: Record<string, number> = {};
  private readonly pastCounts = { handshakes: 0, resumes: 0 };
  private ephemeral!: EphemeralKeyStore;
  private heldBack: (() => void) | null = null;
  private readonly maxCaptured = 4096;
  /** While set, what the server sends waits here (a cookie in flight); see flushToClients. */
  pausedToClients: (() => void)[] | null = null;
  /** The next this-many datagrams a client sends, or the server sends, are lost. */
  loseFromClients = 0;
  loseToClients = 0;

  static keyTree(): KeyTree {
    tree ??= KeyTree.build(fixture("mceliece_pk"), fixture("x25519_pk"));
    return tree;
  }

  private constructor(
    readonly pool: CryptoPool,
    readonly clock: TestClock,
    readonly rng: Prng,
    readonly log: Logger,
    readonly maxPeers: number,
    /** The server's TUN prefix: how many internal addresses it has (default /16). */
    readonly prefix = 16,
  ) {}

  static async start(
    pool: CryptoPool,
    rng: Prng,
    log: Logger,
    opts: { maxPeers: number; clients: number; clock?: TestClock; prefix?: number },
  ): Promise<DeviceNet> {
    DeviceNet.keyTree();
    const clock = opts.clock ?? new TestClock();
    const net = new DeviceNet(pool, clock, rng, log, opts.maxPeers, opts.prefix);
    await net.startServer();
    for (let i = 0; i < opts.clients; i++) net.addClient(ipv4ToNumber(`198.18.1.${i + 2}`));
    return net;
  }

  /** Sends `deliver` over the faulty wire. */
  private wire(deliver: () => void): void {
    const f = this.faults;
    if (f.loss > 0 && this.rng.chance(f.loss)) return;
    const copies = f.duplicate > 0 && this.rng.chance(f.duplicate) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      if (!this.heldBack && f.reorder > 0 && this.rng.chance(f.reorder)) {
        this.heldBack = deliver;
        continue;
      }
      setTimeout(deliver, 0);
      const late = this.heldBack;
      this.heldBack = null;
      if (late) setTimeout(late, 0);
    }
  }

  private async startServer(): Promise<void> {
    this.ephemeral = new EphemeralKeyStore();
    const tun: Uint8Array[] = [];
    this.serverTun = tun;
    const responder = await InThreadResponder.start(this.ephemeral);
    this.server = new ServerDevice(
      {
        tunAddress: ipv4ToNumber("10.42.0.1"),
        prefix: this.prefix,
        hostAddress: SERVER_HOST,
        maxPeers: this.maxPeers,
        maxPendingHandshakes: 8,
        replayHashKey: crypto.getRandomValues(new Uint8Array(8)),
      },
      {
        sendUdp: (data, host, port) => {
          this.ledger.record(data, "server-to-client");
          if (this.capturedFromServer.length < this.maxCaptured) {
            this.capturedFromServer.push(data.slice());
          }
          const to = this.clients.find((c) => c.host === host);
          if (!to) return; // to the attacker's address: recorded, goes nowhere
          if (this.loseToClients > 0) return void this.loseToClients--;
          const copy = data.slice();
          const deliver = () => to.device.onDatagram(copy, SERVER_HOST, port);
          if (this.pausedToClients) this.pausedToClients.push(deliver);
          else this.wire(deliver);
        },
        writeTun: (p) => void tun.push(p.slice()),
      },
      responder,
      this.ephemeral,
      // as the daemon: fresh randomness in every process
      new CookieKeyring(fixture("session_key"), crypto.getRandomValues(new Uint8Array(32))),
      this.log,
      { mono: () => this.clock.mono, wall: () => this.clock.wall },
    );
    await this.serverTick();
  }

  /** What the server's key server answers to `request` (ok: false when it stays silent). */
  answerKeyRequest(request: Uint8Array): ReturnType<typeof answerKeyRequest> {
    return answerKeyRequest(request, tree!, this.ephemeral, this.clock.wall);
  }

  /** The server's once-a-second maintenance, with the ephemeral keys it needs. */
  async serverTick(): Promise<void> {
    for (const slot of this.ephemeral.due(this.clock.wall)) {
      const kp = await this.pool.sntrupKeypair();
      const x = crypto.getRandomValues(new Uint8Array(32));
      this.ephemeral.add({
        slot,
        sntrupPk: kp.publicKey,
        sntrupSk: kp.secretKey,
        x25519Pk: x25519PublicKey(x),
        x25519Sk: x,
      });
    }
    this.server.tick(crypto.getRandomValues(new Uint8Array(32)));
  }

  /** The server process dies and starts again: every key it held in memory is gone. */
  async restartServer(): Promise<void> {
    this.server.close();
    for (const [k, v] of Object.entries(this.server.drops.snapshot())) {
      this.pastDrops[k] = (this.pastDrops[k] ?? 0) + v;
    }
    this.pastCounts.handshakes += this.server.handshakes;
    this.pastCounts.resumes += this.server.resumes;
    this.restarts++;
    await this.startServer();
  }

  private addClient(host: number): void {
    const tun: Uint8Array[] = [];
    const device = new ClientDevice(
      {
        tunAddress: CLIENT_TUN,
        prefix: 16,
        defaultCryptoPort: 42424,
        defaultKeyPort: 42425,
        keyFetchSeconds: 10,
        precomputed: 2,
      },
      {
        sendUdp: (data) => {
          this.ledger.record(data, "client-to-server");
          const copy = data.slice();
          if (this.captured.length < this.maxCaptured) this.captured.push(copy.slice());
          if (this.loseFromClients > 0) return void this.loseFromClients--;
          this.wire(() => this.server.onDatagram(copy, host, 42423));
        },
        writeTun: (p) => void tun.push(p.slice()),
        openKeyChannel: (_host, _port, deliver): KeyChannel => {
          let open = true;
          return {
            send: (d) => {
              const a = answerKeyRequest(d, tree!, this.ephemeral, this.clock.wall);
              // answers arrive later, as from a socket
              if (a.ok) setTimeout(() => open && deliver(a.response), 0);
            },
            close: () => open = false,
          };
        },
        resolveTxt: () => Promise.resolve([]),
        wakeAt: () => {}, // the test ticks the clients when it moves the clock
      },
      {
        registerMcEliecePk: (pk) => this.pool.registerMcEliecePublicKey(pk),
        unregisterMcEliecePk: (id) => this.pool.unregisterMcEliecePublicKey(id),
        mcelieceEncap: (id) => this.pool.mcelieceEncap(id),
        sntrupEncap: (pk) => this.pool.sntrupEncap(pk),
      },
      this.log,
      new DropCounters(),
      () => this.clock.mono,
      (n) => crypto.getRandomValues(new Uint8Array(n)),
    );
    this.clients.push({ host, device, tun });
  }

  /** An application on client `i` sends `text` to the server. */
  clientSend(i: number, text: string): void {
    const c = this.clients[i];
    c.internal ??= c.device.announce({ keyHash: tree!.root }, SERVER_HOST, "www.lab.test")!;
    c.device.onTunPacket(udpPacket(CLIENT_TUN, c.internal, new TextEncoder().encode(text)));
  }

  /** Lets what the server sent while paused go, in order. */
  flushToClients(): void {
    const waiting = this.pausedToClients ?? [];
    this.pausedToClients = null;
    for (const deliver of waiting) this.wire(deliver);
  }

  /** The server's side answers client `i` (false when the server has no tunnel for it). */
  serverSend(i: number, text: string): boolean {
    const c = this.clients[i];
    const peer = [...this.server.peers.all(), ...this.server.lingeringPeers.all()].find((p) =>
      p.host === c.host
    );
    if (!peer) return false;
    this.server.onTunPacket(udpPacket(SERVER_HOST, peer.internal, new TextEncoder().encode(text)));
    return true;
  }

  /**
   * An attacker sends a recorded datagram to the server from its own address. Returns how many
   * packets the server wrote to its TUN device because of it (tunnel packets and cookies are
   * handled synchronously; a handshake shows in `server.handshakes` later).
   */
  inject(datagram: Uint8Array): number {
    const before = this.serverTun.length;
    this.server.onDatagram(datagram.slice(), ATTACKER_HOST, 40000);
    return this.serverTun.length - before;
  }

  /** Drops of every server incarnation so far. */
  allDrops(): Record<string, number> {
    const all = { ...this.pastDrops };
    for (const [k, v] of Object.entries(this.server.drops.snapshot())) all[k] = (all[k] ?? 0) + v;
    return all;
  }

  /** Handshakes and cookie resumes of every server incarnation so far. */
  allCounts(): { handshakes: number; resumes: number } {
    return {
      handshakes: this.pastCounts.handshakes + this.server.handshakes,
      resumes: this.pastCounts.resumes + this.server.resumes,
    };
  }

  /** A datagram the server receives from client `i`'s address, handled at once. */
  fromClient(i: number, datagram: Uint8Array): void {
    this.server.onDatagram(datagram.slice(), this.clients[i].host, 42423);
  }

  clientTick(): void {
    for (const c of this.clients) c.device.tick();
  }

  close(): void {
    this.server.close();
    for (const c of this.clients) c.device.close();
  }
}

export async function until(cond: () => boolean, ms = 20_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 2));
  }
  return true;
}

/** Sum of all drop counters: every datagram the server refuses counts once. */
export function dropTotal(d: DropCounters): number {
  return Object.values(d.snapshot()).reduce((a, b) => a + b, 0);
}

/** A test with a crypto pool holding the fixture server's McEliece secret key. */
export function netTest(name: string, body: (pool: CryptoPool) => Promise<void>): void {
  Deno.test({
    name,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
      try {
        await body(pool);
      } finally {
        await pool.close();
      }
    },
  });
}

/** What each packet written to a TUN device carries, as text. */
export const texts = (tun: Uint8Array[]) => tun.map(payloadText);

/** Client `i` sends `text`; true once it reached the server's TUN device. */
export async function through(
  net: DeviceNet,
  i: number,
  text: string,
  ms = 5000,
): Promise<boolean> {
  net.clientSend(i, text);
  return await until(() => texts(net.serverTun).includes(text), ms);
}

/**
 * A netTest on our server with room for one tunnel and two clients, so each new tunnel evicts the
 * other with a cookie; `seed` drives the randomness. Fails if any packet key was sealed twice.
 * `slotSecond`: start the clock that many seconds after a 30 s slot began (from 0 to 59).
 */
export function evictionTest(
  name: string,
  seed: number,
  body: (net: DeviceNet) => Promise<void>,
  slotSecond?: number,
): void {
  netTest(name, async (pool) => {
    const log = new StderrLogger("test", "error");
    const clock = new TestClock();
    if (slotSecond !== undefined) clock.advance(slotSecond - (clock.wall % 30));
    const net = await DeviceNet.start(pool, new Prng(seed), log, {
      maxPeers: 1,
      clients: 2,
      clock,
    });
    try {
      await body(net);
      assert.deepEqual(net.ledger.reuses, [], "a packet key sealed twice");
    } finally {
      net.close();
    }
  });
}
