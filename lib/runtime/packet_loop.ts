// The event loop shapes of the packet sources. A handler error is a bug, not bad input (the
// parsers never throw), so it is reported and the loop keeps serving.
//
// pump(): for low-rate sources (key requests, DNS answers). Wait for readiness off the JS thread
// (an FFI poll on Deno's blocking pool), then drain synchronously until empty.
//
// packetLoop(): for the tunnel's data path. A wait on the blocking pool costs two thread wakeups
// per packet burst (pool thread, then the JS thread), about 60-200 µs in a VM. So while packets
// flow the loop waits in a synchronous poll() on the JS thread itself, one wakeup, and right
// after a burst it polls without sleeping for a few microseconds, which catches the answer to
// what it just sent. It gives the event loop a turn at least every `maxBlockMs` (timers,
// handshakes finishing in workers, signals), and once nothing has come for `hotMs` it goes back
// to parking on the blocking pool, so an idle tunnel costs no CPU.

import { libc, POLLIN } from "../../ffi/libc.ts";
import type { TunDevice } from "../../ffi/tun.ts";
import type { UdpSocket } from "../../ffi/udp.ts";
import type { TunnelIo } from "../core/data_path.ts";

export async function pump(
  name: string,
  running: () => boolean,
  wait: (ms: number) => Promise<boolean>,
  drain: () => void,
): Promise<void> {
  while (running()) {
    const ready = await wait(250);
    if (!running()) return;
    if (!ready) continue;
    try {
      drain();
    } catch (e) {
      reportError(name, e);
    }
  }
}

function reportError(name: string, e: unknown): void {
  console.error(`${name}: packet loop error: ${(e as Error).stack ?? e}`);
}

export interface PacketSource {
  fd: number;
  /** Handles at most one batch of what is queued; returns how many packets it took that
   * count as traffic (they keep the loop in its low-latency mode). */
  drain(): number;
}

export interface PacketLoopOptions {
  /** Busy polling after the last packet, in microseconds (default 30). */
  spinMicros?: number;
  /** Waiting in a blocking poll on this thread after the last packet, in ms (default 1000). */
  hotMs?: number;
  /**
   * The longest the event loop waits for a turn, in ms (default 2). Measured: turns every 20 ms
   * instead, while quiet, made a 10 ms ping slower (0.85 against 0.55 ms): a vCPU that sleeps
   * longer wakes up slower.
   */
  maxBlockMs?: number;
  /** Called after every round of drains, e.g. to send what the round queued. */
  flush?: () => void;
}

/** How long an idle loop parks in one wait on the blocking pool (ms). */
const PARK_MS = 250;

export async function packetLoop(
  name: string,
  running: () => boolean,
  sources: PacketSource[],
  opts: PacketLoopOptions = {},
): Promise<void> {
  const spinMs = (opts.spinMicros ?? 30) / 1000;
  const hotMs = opts.hotMs ?? 1000;
  const maxBlockMs = opts.maxBlockMs ?? 2;
  const flush = opts.flush ?? (() => {});
  const count = sources.length;
  // One pollfd (fd, events, revents) per source.
  const pfds = new Uint8Array(8 * count);
  const pview = new DataView(pfds.buffer);
  for (let i = 0; i < count; i++) {
    pview.setInt32(8 * i, sources[i].fd, true);
    pview.setInt16(8 * i + 4, POLLIN, true);
  }
  const nfds = BigInt(count);
  const { poll, pollAsync } = libc();
  const readyMask = (): number => {
    let mask = 0;
    for (let i = 0; i < count; i++) if (pview.getInt16(8 * i + 6, true) !== 0) mask |= 1 << i;
    return mask;
  };

  let lastPacket = -Infinity;
  let lastYield = performance.now();
  while (running()) {
    const now = performance.now();
    const quiet = now - lastPacket;
    const turnDue = lastYield + maxBlockMs;
    let n: number;
    if (quiet >= hotMs) {
      n = await pollAsync(pfds, nfds, PARK_MS);
      lastYield = performance.now();
    } else if (now >= turnDue) {
      n = await pollAsync(pfds, nfds, 0); // the event loop's turn
      lastYield = performance.now();
    } else if (quiet < spinMs) {
      n = poll(pfds, nfds, 0);
    } else {
      // Sleep on this thread, but not past the event loop's next turn.
      n = poll(pfds, nfds, Math.max(1, Math.ceil(turnDue - now)));
    }
    if (n <= 0 || !running()) continue;
    const mask = readyMask();
    let packets = 0;
    try {
      for (let i = 0; i < count; i++) if (mask & (1 << i)) packets += sources[i].drain();
    } catch (e) {
      reportError(name, e);
    }
    try {
      flush();
    } catch (e) {
      reportError(name, e);
    }
    if (packets > 0) lastPacket = performance.now();
  }
}

/** The TUN side and the UDP side of a tunnel endpoint, wired for batching. */
export interface TunnelSockets {
  tun: TunDevice;
  sock: UdpSocket;
}

/**
 * The packet loop of a tunnel endpoint, and the TunnelIo the device's data path writes to:
 * datagrams sent while a batch is handled are queued and go out together (sendmmsg) when the
 * batch is done; sent at any other time (a handshake finishing, a cookie) they go out at once.
 * udpBuffer() lets a device seal straight into the next send slot.
 */
export class TunnelLoop implements TunnelIo {
  #draining = false;
  readonly #bufs: Uint8Array[];
  readonly #lens: number[];

  constructor(readonly io: TunnelSockets, tunBatch = 64, tunBufferBytes = 65536) {
    this.#bufs = Array.from({ length: tunBatch }, () => new Uint8Array(tunBufferBytes));
    this.#lens = new Array<number>(tunBatch).fill(0);
  }

  /** Queues (or, outside a batch, sends) one datagram; false if it was refused at once. */
  sendUdp(data: Uint8Array, host: number, port: number): boolean {
    const ok = this.io.sock.queue(data, host, port);
    if (!this.#draining) this.io.sock.flush();
    return ok;
  }

  /** Where the next datagram may be built in place (see UdpSocket.sendSlot). */
  udpBuffer(): Uint8Array | undefined {
    return this.io.sock.sendSlot();
  }

  writeTun(packet: Uint8Array): boolean {
    return this.io.tun.write(packet);
  }

  /** Serves both sides until `running` turns false. */
  run(
    name: string,
    running: () => boolean,
    onTunPacket: (packet: Uint8Array) => void,
    onDatagram: (data: Uint8Array, host: number, port: number) => void,
    opts: PacketLoopOptions = {},
  ): Promise<void> {
    const { tun, sock } = this.io;
    const bufs = this.#bufs;
    const lens = this.#lens;
    const batch = (fn: () => number) => () => {
      this.#draining = true;
      try {
        return fn();
      } finally {
        this.#draining = false;
      }
    };
    return packetLoop(name, running, [
      {
        fd: tun.fd,
        drain: batch(() => {
          const n = tun.readBatch(bufs, lens);
          let ipv4 = 0;
          for (let i = 0; i < n; i++) {
            // Only IPv4 is tunnelled: the kernel's own IPv6 chatter on the device (router
            // solicitations, MLD) must not keep the loop awake.
            if (bufs[i][0] >> 4 === 4) ipv4++;
            onTunPacket(bufs[i].subarray(0, lens[i]));
          }
          return ipv4;
        }),
      },
      {
        fd: sock.fd,
        drain: batch(() => {
          const got = sock.recvBatch();
          for (const d of got) onDatagram(d.data, d.addr, d.port);
          return got.length;
        }),
      },
    ], { ...opts, flush: () => sock.flush() });
  }
}
