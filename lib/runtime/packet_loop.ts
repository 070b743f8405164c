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
import { type TunDevice, VNET_HDR_BYTES } from "../../ffi/tun.ts";
import type { UdpSocket } from "../../ffi/udp.ts";
import type { TunnelIo } from "../core/data_path.ts";
import { splitFrame, TcpCoalescer } from "../core/offload.ts";
import type { DropCounters } from "../core/log.ts";

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
  /**
   * Served in the middle of a long tunnel batch too (TunnelLoop checks every URGENT_EVERY_MS of
   * batch work), not only between rounds: the client's DNS answers, which an application waits
   * for while a bulk transfer keeps the loop busy for milliseconds a round.
   */
  urgent?: boolean;
  /**
   * While this says true the loop leaves the source unread (its fd is out of the poll set), so
   * what arrives waits in its socket buffer, and a full buffer sheds in the kernel. Asked once a
   * round. The server's initiation socket while its handshake queue is full (issue 8).
   */
  paused?: () => boolean;
}

/**
 * How often a tunnel batch looks for urgent sources, in ms of its own work. Issue 11: during a
 * bulk upload one round of the client's loop (64 TUN frames of up to 64 kB, ~3000 packets) ran
 * for up to ~12 ms with a DNS answer waiting. One poll(0) per 0.5 ms of work costs < 0.5 %.
 */
const URGENT_EVERY_MS = 0.5;

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
  /**
   * Called once a round, right after the wait: a bounded piece of other work done between
   * socket reads rather than in one long event-loop turn (the server finishing handshakes).
   * `busy`: the wait found packets. Returns true while work is left (the loop stays awake).
   */
  work?: (busy: boolean) => boolean;
  /**
   * While this says true, every wait goes through the event loop (pollAsync), so a message from
   * a worker thread is handed over as it comes. The turn of `pollAsync(0)` every `maxBlockMs`
   * does not do that reliably: a worker's reply waited a median 12 ms and up to 288 ms for a
   * turn that dispatched it (bench/README.md, issue 11, fourth pass).
   */
  awaitingWorker?: () => boolean;
  /**
   * Called while hot after a timed wait that found nothing (at most once per `maxBlockMs`): a
   * few µs of the data path's own work on dummy data, so the next real packet finds its code and
   * data in cache (lib/runtime/path_warmer.ts). Never while parked: an idle loop costs nothing.
   */
  warm?: () => void;
}

/** How long an idle loop parks in one wait on the blocking pool (ms). */
const PARK_MS = 250;

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const MSG_DONTWAIT = 0x40;

/**
 * Sources that may come and go while a packetLoop serves them (the client's key conversations).
 * A change wakes the loop through a socket pair, even while it is parked on the thread pool.
 */
export class SourceList {
  #list: PacketSource[];
  #wake: [number, number];
  #byte = new Uint8Array(1);
  generation = 0;
  #urgent: PacketSource[] = [];
  #urgentFds = new Uint8Array(0);
  #urgentBuilt = -1;

  constructor(initial: PacketSource[]) {
    const fds = new Int32Array(2);
    const r = libc().socketpair(
      AF_UNIX,
      SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
      0,
      new Uint8Array(fds.buffer),
    );
    if (r < 0) throw new Error("socketpair for the packet loop's wakeups failed");
    this.#wake = [fds[0], fds[1]];
    const wake = { fd: fds[0], drain: () => this.#drainWake() };
    this.#list = [wake, ...initial];
  }

  get list(): readonly PacketSource[] {
    return this.#list;
  }

  add(source: PacketSource): void {
    // Urgent sources come right after the wake pair: a round drains them first.
    this.#list = source.urgent
      ? [this.#list[0], source, ...this.#list.slice(1)]
      : [...this.#list, source];
    this.generation++;
    libc().send(this.#wake[1], this.#byte, 1n, MSG_DONTWAIT); // a full pair is awake anyway
  }

  remove(source: PacketSource): void {
    this.#list = this.#list.filter((s) => s !== source);
    this.generation++;
  }

  /**
   * Drains the urgent sources that are readable now (one poll(0)); what they took. A source
   * removed meanwhile is not polled: the list is rebuilt after every change.
   */
  serveUrgent(): number {
    if (this.#urgentBuilt !== this.generation) {
      this.#urgent = this.#list.filter((s) => s.urgent === true);
      this.#urgentFds = new Uint8Array(8 * this.#urgent.length);
      const v = new DataView(this.#urgentFds.buffer);
      this.#urgent.forEach((s, i) => {
        v.setInt32(8 * i, s.fd, true);
        v.setInt16(8 * i + 4, POLLIN, true);
      });
      this.#urgentBuilt = this.generation;
    }
    const list = this.#urgent;
    if (list.length === 0) return 0;
    const fds = this.#urgentFds;
    if (libc().poll(fds, BigInt(list.length), 0) <= 0) return 0;
    let taken = 0;
    for (let i = 0; i < list.length; i++) {
      // revents, little-endian int16 at offset 6
      if (fds[8 * i + 6] === 0 && fds[8 * i + 7] === 0) continue;
      taken += list[i].drain();
    }
    return taken;
  }

  #drainWake(): number {
    while (Number(libc().recv(this.#wake[0], this.#byte, 1n, MSG_DONTWAIT)) > 0) { /* empty */ }
    return 0;
  }

  close(): void {
    libc().close(this.#wake[0]);
    libc().close(this.#wake[1]);
  }
}

export async function packetLoop(
  name: string,
  running: () => boolean,
  sourcesIn: PacketSource[] | SourceList,
  opts: PacketLoopOptions = {},
): Promise<void> {
  const spinMs = (opts.spinMicros ?? 0) / 1000;
  const hotMs = opts.hotMs ?? 1000;
  const maxBlockMs = opts.maxBlockMs ?? 2;
  const flush = opts.flush ?? (() => {});
  const work = opts.work;
  const awaitingWorker = opts.awaitingWorker;
  const warm = opts.warm;
  const set = sourcesIn instanceof SourceList ? sourcesIn : null;
  let sources: readonly PacketSource[] = [];
  let count = 0;
  // One pollfd (fd, events, revents) per source.
  let pfds = new Uint8Array(0);
  let pview = new DataView(pfds.buffer);
  let nfds = 0n;
  let built = -1;
  let pausable = false;
  const build = () => {
    sources = set ? set.list : sourcesIn as PacketSource[];
    count = sources.length;
    pfds = new Uint8Array(8 * count);
    pview = new DataView(pfds.buffer);
    for (let i = 0; i < count; i++) {
      pview.setInt32(8 * i, sources[i].fd, true);
      pview.setInt16(8 * i + 4, POLLIN, true);
    }
    nfds = BigInt(count);
    built = set ? set.generation : 0;
    pausable = sources.some((s) => s.paused !== undefined);
  };
  build();
  const { poll, pollAsync } = libc();
  /** A paused source's fd is written as -1, which poll() skips; restored when it resumes. */
  const pauseSources = () => {
    for (let i = 0; i < count; i++) {
      const paused = sources[i].paused;
      if (paused === undefined) continue;
      pview.setInt32(8 * i, paused() ? -1 : sources[i].fd, true);
      pview.setInt16(8 * i + 6, 0, true);
    }
  };

  let lastPacket = -Infinity;
  let lastYield = performance.now();
  while (running()) {
    if (set && set.generation !== built) build();
    const now = performance.now();
    const quiet = now - lastPacket;
    const turnDue = lastYield + maxBlockMs;
    if (pausable) pauseSources();
    let n: number;
    if (quiet >= hotMs) {
      n = await pollAsync(pfds, nfds, PARK_MS);
      lastYield = performance.now();
    } else if (awaitingWorker?.()) {
      n = await pollAsync(pfds, nfds, maxBlockMs);
      lastYield = performance.now();
    } else if (now >= turnDue) {
      n = await pollAsync(pfds, nfds, 0); // the event loop's turn
      lastYield = performance.now();
    } else if (quiet < spinMs) {
      n = poll(pfds, nfds, 0);
    } else {
      // Sleep on this thread, but not past the event loop's next turn.
      n = poll(pfds, nfds, Math.max(1, Math.ceil(turnDue - now)));
      if (n === 0 && warm !== undefined) {
        try {
          warm();
        } catch (e) {
          reportError(name, e);
        }
      }
    }
    if (work !== undefined) {
      try {
        if (work(n > 0)) lastPacket = performance.now();
      } catch (e) {
        reportError(name, e);
      }
    }
    if (n <= 0 || !running()) continue;
    // A source removed while we waited is skipped: its descriptor may be closed already.
    const current = set ? set.list : sources;
    let packets = 0;
    try {
      for (let i = 0; i < count; i++) {
        if (pview.getInt16(8 * i + 6, true) === 0) continue;
        const src = sources[i];
        if (current !== sources && !current.includes(src)) continue;
        packets += src.drain();
      }
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
  /**
   * The server's handshake initiations, sorted out of `sock`'s traffic by the kernel
   * (lib/server/crypto_port.ts). Handled by the same onDatagram, and read before `sock` in a
   * round, so an initiation is seen before the 0-RTT packets that came right behind it.
   */
  initiations?: UdpSocket | null;
}

/** Room for one TUN read: a 64 kB segment behind its virtio_net_hdr. */
const TUN_FRAME_BYTES = VNET_HDR_BYTES + 65535;

/**
 * The packet loop of a tunnel endpoint, and the TunnelIo the device's data path writes to:
 * datagrams sent while a batch is handled are queued and go out together (sendmmsg, and UDP GSO where the kernel has it) when the batch is done; sent at
 * any other time (a handshake finishing, a cookie) they go out at once. udpBuffer() lets a
 * device seal straight into the next send slot.
 *
 * With a TUN device opened with offloads, a read may be one 64 kB TCP segment: it is cut into
 * MTU-sized packets before the device sees them (lib/core/offload.ts), and the packets the device
 * writes during a batch are joined again per TCP flow, so one write moves up to 64 kB. The
 * device sees one IP packet at a time either way.
 */
export class TunnelLoop implements TunnelIo {
  #draining = false;
  /** performance.now() when the batch being handled began. */
  #batchStart = 0;
  /** When the batch being handled looks for urgent sources next. */
  #urgentAt = 0;
  readonly #bufs: Uint8Array[];
  readonly #lens: number[];
  readonly #coalescer: TcpCoalescer | null;
  /** Sources served besides the TUN device and the socket; see addSource. */
  #sources: SourceList | null = null;
  /** Packets cut from TUN segments, and frames refused by the kernel or malformed. */
  readonly stats = { segmentsSplit: 0, framesRead: 0, framesWritten: 0 };
  #drops: DropCounters | null = null;

  constructor(readonly io: TunnelSockets, tunBatch = 64) {
    const bytes = io.tun.vnetHeader ? TUN_FRAME_BYTES : 65536;
    this.#bufs = Array.from({ length: tunBatch }, () => new Uint8Array(bytes));
    this.#lens = new Array<number>(tunBatch).fill(0);
    this.#coalescer = io.tun.vnetHeader
      ? new TcpCoalescer((frame) => {
        this.stats.framesWritten++;
        if (!io.tun.writeFrame(frame)) this.#drops?.count("tun-write-failed");
      })
      : null;
    io.sock.enableGso();
    io.sock.enableGro();
  }

  /** What the kernel granted: TUN offloads, UDP GSO and GRO. */
  get offloads(): string {
    const { gso, gro } = this.io.sock.offloads;
    const on = [
      ...(this.io.tun.vnetHeader ? ["TUN segmentation"] : []),
      ...(gso ? ["UDP GSO"] : []),
      ...(gro ? ["UDP GRO"] : []),
    ];
    return on.length === 0 ? "none" : on.join(", ");
  }

  /** One line for the log: how much the offloads batched. */
  summary(): string {
    const { tun, sock } = this.io;
    const c = this.#coalescer?.stats;
    return `TUN: ${this.stats.framesRead} frames read (${this.stats.segmentsSplit} packets cut ` +
      `from segments), ${tun.stats.packetsWritten} writes` +
      (c ? ` (${c.coalescedSegments} packets joined into segments)` : "") +
      `; UDP: ${sock.stats.received} datagrams in` +
      (this.io.initiations ? ` (and ${this.io.initiations.stats.received} initiations)` : "") +
      `, ${sock.stats.sent} out, ${sock.stats.sendFailures} not sent`;
  }

  /**
   * Serves one more source on this loop from now on (until removeSource): a key conversation's
   * socket, answered without waiting for a turn of the event loop.
   */
  addSource(source: PacketSource): void {
    if (this.#sources) this.#sources.add(source);
    else this.#pending.push(source);
  }

  removeSource(source: PacketSource): void {
    this.#pending = this.#pending.filter((s) => s !== source);
    this.#sources?.remove(source);
  }

  #pending: PacketSource[] = [];

  /** Within a batch: serves the urgent sources once per URGENT_EVERY_MS of its work. */
  #checkUrgent(name: string): void {
    const t = performance.now();
    if (t < this.#urgentAt || this.#sources === null) return;
    this.#urgentAt = t + URGENT_EVERY_MS;
    try {
      this.#sources.serveUrgent();
    } catch (e) {
      reportError(name, e);
    }
  }

  /**
   * performance.now(), read once per batch: the packets of a batch (at most a few ms of
   * traffic) are all handled at the time it began. Reading the clock per packet cost more than
   * any other step but the AEAD and the system calls.
   */
  now(): number {
    return this.#draining ? this.#batchStart : performance.now();
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

  /**
   * Writes one IP packet to the TUN device. During a batch, with offloads, it waits (by
   * reference: the packet must stay valid until the batch ends) to be joined with the next
   * segments of its TCP flow; true then means queued.
   */
  writeTun(packet: Uint8Array, partialChecksum = false): boolean {
    if (this.#draining && this.#coalescer !== null) {
      this.#coalescer.push(packet, partialChecksum);
      return true;
    }
    return this.io.tun.write(packet, partialChecksum);
  }

  /** With offloads the kernel finishes TCP checksums the data path leaves partial. */
  get finishesChecksums(): boolean {
    return this.io.tun.vnetHeader;
  }

  /** Serves both sides until `running` turns false. Drops are counted in `drops` if given. */
  run(
    name: string,
    running: () => boolean,
    onTunPacket: (packet: Uint8Array) => void,
    onDatagram: (data: Uint8Array, host: number, port: number) => void,
    opts: PacketLoopOptions & {
      drops?: DropCounters;
      /** More sources served on the same loop (the server's key port). */
      sources?: PacketSource[];
      /**
       * How many initiations a round may read: the rest wait in their socket, and while it says 0
       * the socket is out of the poll set (see PacketSource.paused).
       */
      initiationRoom?: () => number;
    } = {},
  ): Promise<void> {
    const { tun, sock, initiations } = this.io;
    const room = opts.initiationRoom;
    const bufs = this.#bufs;
    const lens = this.#lens;
    this.#drops = opts.drops ?? null;
    const stats = this.stats;
    const batch = (fn: () => number) => () => {
      this.#draining = true;
      this.#batchStart = performance.now();
      this.#urgentAt = this.#batchStart + URGENT_EVERY_MS;
      try {
        return fn();
      } finally {
        this.#draining = false;
      }
    };
    // Only IPv4 is tunnelled: the kernel's own IPv6 chatter on the device (router
    // solicitations, MLD) must not keep the loop awake.
    let ipv4 = 0;
    const onSegment = (p: Uint8Array) => {
      if (p[0] >> 4 === 4) ipv4++;
      onTunPacket(p);
    };
    const vnet = tun.vnetHeader;
    const coalescer = this.#coalescer;
    // One callback for every batch (no closure per batch): each datagram, and a look at the
    // urgent sources every 16 of them.
    let received = 0;
    const onEachDatagram = (data: Uint8Array, addr: number, port: number) => {
      onDatagram(data, addr, port);
      if ((++received & 15) === 0) this.#checkUrgent(name);
    };
    const sources = new SourceList([
      {
        fd: tun.fd,
        drain: batch(() => {
          const n = tun.readBatch(bufs, lens);
          ipv4 = 0;
          for (let i = 0; i < n; i++) {
            const frame = bufs[i].subarray(0, lens[i]);
            if (!vnet) {
              onSegment(frame);
              continue;
            }
            stats.framesRead++;
            const r = splitFrame(frame, onSegment);
            if (!r.ok) this.#drops?.count(r.reason);
            else if (r.packets > 1) stats.segmentsSplit += r.packets;
            this.#checkUrgent(name);
          }
          coalescer?.flush(); // nothing written now may outlive the read buffers
          return ipv4;
        }),
      },
      ...(initiations
        ? [{
          fd: initiations.fd,
          drain: batch(() => initiations.recvEach(onDatagram, room?.() ?? Infinity)),
          paused: room && (() => room() <= 0),
        }]
        : []),
      {
        fd: sock.fd,
        drain: batch(() => {
          received = 0;
          const got = sock.recvEach(onEachDatagram);
          // The packets written meanwhile are views into the receive slots: out before the
          // next receive.
          coalescer?.flush();
          return got;
        }),
      },
      ...(opts.sources ?? []),
      ...this.#pending,
    ]);
    this.#pending = [];
    this.#sources = sources;
    return packetLoop(name, running, sources, { ...opts, flush: () => sock.flush() })
      .finally(() => {
        this.#sources = null;
        sources.close();
      });
  }
}
