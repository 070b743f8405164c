// A netfilter queue (NFQUEUE) consumer speaking nfnetlink directly over a raw netlink socket,
// without libnetfilter_queue. Packets matched by an NFQUEUE rule are handed to us in
// NFQNL_MSG_PACKET messages; each must get an NFQNL_MSG_VERDICT (accept, optionally with a
// replacement packet) or the kernel holds it until the queue is torn down.
//
// Every nfnetlink message we send, verdicts included, is checked against CAP_NET_ADMIN of the
// sending process: the process that reads the queue must keep that capability.
//
// Layouts (linux/netlink.h, linux/netfilter/nfnetlink.h, nfnetlink_queue.h): netlink headers
// and attribute headers are in host byte order, nfnetlink payload fields in network order.

import {
  check,
  EAGAIN,
  EINTR,
  ENOBUFS,
  errno,
  libc,
  O_CLOEXEC,
  O_NONBLOCK,
  SysError,
  waitReadable,
} from "./libc.ts";

const AF_NETLINK = 16;
const AF_UNSPEC = 0;
const AF_INET = 2;
const SOCK_RAW = 3;
const NETLINK_NETFILTER = 12;
const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_RCVBUFFORCE = 33;
const SOL_NETLINK = 270;
const NETLINK_NO_ENOBUFS = 5;
const NETLINK_CAP_ACK = 10;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;

const NLMSG_HDRLEN = 16;
const NLMSG_ERROR = 2;
const NLMSG_OVERRUN = 4;
const NLM_F_REQUEST = 1;
const NLM_F_ACK = 4;
const NFGEN_HDRLEN = 4;
const NFNETLINK_V0 = 0;

const NFNL_SUBSYS_QUEUE = 3;
const NFQNL_MSG_PACKET = 0;
const NFQNL_MSG_VERDICT = 1;
const NFQNL_MSG_CONFIG = 2;

const NFQA_PACKET_HDR = 1;
const NFQA_VERDICT_HDR = 2;
const NFQA_MARK = 3;
const NFQA_IFINDEX_INDEV = 5;
const NFQA_IFINDEX_OUTDEV = 6;
const NFQA_PAYLOAD = 10;
const NFQA_CAP_LEN = 13;

const NFQA_CFG_CMD = 1;
const NFQA_CFG_PARAMS = 2;
const NFQA_CFG_QUEUE_MAXLEN = 3;
const NFQA_CFG_MASK = 4;
const NFQA_CFG_FLAGS = 5;
const NFQNL_CFG_CMD_BIND = 1;
const NFQNL_CFG_CMD_UNBIND = 2;
const NFQNL_CFG_CMD_PF_BIND = 3;
const NFQNL_CFG_CMD_PF_UNBIND = 4;
const NFQNL_COPY_PACKET = 2;
const NFQA_CFG_F_FAIL_OPEN = 1;

const NLA_TYPE_MASK = 0x3fff;

export const NF_DROP = 0;
export const NF_ACCEPT = 1;

const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
// Largest packet the kernel copies (copy range 0xffff) plus netlink and attribute headers.
const RECV_BUFFER = 0x10000 + 0x1000;
const MAX_BATCH = 256;

/** A packet waiting for our verdict. */
export interface QueuedPacket {
  /** Packet id to pass to `verdict`. */
  id: number;
  /** Link-layer protocol (0x0800 for IPv4). */
  hwProtocol: number;
  /** Netfilter hook number (1 = input). */
  hook: number;
  /** The packet from its network header on (a copy, owned by the caller). */
  payload: Uint8Array;
  /** The kernel's packet was longer than `payload` (copy range reached): a replacement
   * payload would truncate it, so accept it unchanged. */
  truncated: boolean;
  mark?: number;
  inIfindex?: number;
  outIfindex?: number;
}

export interface NfQueueOptions {
  /** Accept packets instead of dropping them when the queue is full. Default true. */
  failOpen?: boolean;
  /** Kernel-side queue length limit. Default: the kernel's (1024). */
  maxLen?: number;
  /** Socket receive buffer in bytes. Default 4 MiB. */
  receiveBuffer?: number;
  /** How long one wait in `packets()` lasts before checking for `close()`. Default 250 ms. */
  pollIntervalMs?: number;
}

export interface NfQueueStats {
  received: number;
  verdicts: number;
  /** Messages or attributes whose lengths did not add up; skipped. */
  malformed: number;
  /** Netlink datagrams larger than our buffer; skipped. */
  oversized: number;
  /** Error reports from the kernel for messages we sent without asking for an ack. */
  kernelErrors: number;
  lastKernelError: number;
  /** Times the socket buffer overflowed and packets were lost to us. */
  overruns: number;
}

class Writer {
  readonly buf: Uint8Array<ArrayBuffer>;
  readonly view: DataView;
  len = 0;
  constructor(size: number) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
  }
  /** nlmsghdr + nfgenmsg; the length is filled in by `finish`. */
  header(type: number, flags: number, seq: number, family: number, resId: number) {
    this.len = 0;
    this.buf.fill(0);
    this.view.setUint16(4, type, HOST_LE);
    this.view.setUint16(6, flags, HOST_LE);
    this.view.setUint32(8, seq, HOST_LE);
    this.buf[16] = family;
    this.buf[17] = NFNETLINK_V0;
    this.view.setUint16(18, resId, false);
    this.len = NLMSG_HDRLEN + NFGEN_HDRLEN;
  }
  /** Appends an attribute; `fill` writes its value at the given offset. */
  attr(type: number, size: number, fill: (o: number) => void) {
    const o = this.len;
    this.view.setUint16(o, 4 + size, HOST_LE);
    this.view.setUint16(o + 2, type, HOST_LE);
    fill(o + 4);
    this.len = o + align4(4 + size);
  }
  finish(): Uint8Array<ArrayBuffer> {
    this.view.setUint32(0, this.len, HOST_LE);
    return this.buf.subarray(0, this.len);
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** sockaddr_nl addressed to the kernel (port id 0). */
function kernelAddress(): Uint8Array<ArrayBuffer> {
  const a = new Uint8Array(12);
  new DataView(a.buffer).setUint16(0, AF_NETLINK, HOST_LE);
  return a;
}

function intOption(v: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, v, HOST_LE);
  return b;
}

export class NfQueue {
  readonly queueNum: number;
  readonly stats: NfQueueStats = {
    received: 0,
    verdicts: 0,
    malformed: 0,
    oversized: 0,
    kernelErrors: 0,
    lastKernelError: 0,
    overruns: 0,
  };
  #fd: number;
  #seq = 1;
  #closed = false;
  #polling = false;
  #pollIntervalMs: number;
  readonly #rx = new Uint8Array(RECV_BUFFER);
  readonly #rxView = new DataView(this.#rx.buffer);
  readonly #tx = new Writer(64);
  readonly #kernel = kernelAddress();
  // Packets that arrived while we were waiting for a configuration ack.
  readonly #early: QueuedPacket[] = [];
  // Acks (seq -> error, 0 = success) seen while draining.
  readonly #acks = new Map<number, number>();

  private constructor(fd: number, queueNum: number, pollIntervalMs: number) {
    this.#fd = fd;
    this.queueNum = queueNum;
    this.#pollIntervalMs = pollIntervalMs;
  }

  /**
   * Opens a netlink socket and binds it to queue `queueNum` in copy-packet mode. Throws
   * SysError (e.g. EPERM without CAP_NET_ADMIN, or when another process holds the queue).
   */
  static async open(queueNum: number, opts: NfQueueOptions = {}): Promise<NfQueue> {
    if (!Number.isInteger(queueNum) || queueNum < 0 || queueNum > 0xffff) {
      throw new RangeError(`bad queue number ${queueNum}`);
    }
    const c = libc();
    const fd = check(
      "socket(AF_NETLINK)",
      c.socket(AF_NETLINK, SOCK_RAW | O_NONBLOCK | O_CLOEXEC, NETLINK_NETFILTER),
    );
    const q = new NfQueue(fd, queueNum, opts.pollIntervalMs ?? 250);
    try {
      await q.#configure(opts);
    } catch (e) {
      c.close(fd);
      q.#closed = true;
      throw e;
    }
    return q;
  }

  async #configure(opts: NfQueueOptions): Promise<void> {
    const c = libc();
    check("bind(netlink)", c.bind(this.#fd, kernelAddress(), 12));
    // Best effort: the buffer must hold bursts of DNS answers while we are busy.
    const rcv = intOption(opts.receiveBuffer ?? 4 << 20);
    if (c.setsockopt(this.#fd, SOL_SOCKET, SO_RCVBUFFORCE, rcv, 4) !== 0) {
      c.setsockopt(this.#fd, SOL_SOCKET, SO_RCVBUF, rcv, 4);
    }
    // An overflowing socket buffer should not surface as recv errors in the middle of a drain
    // (with fail-open the kernel accepts what it cannot deliver), and acks need not echo our
    // (possibly packet-sized) requests back.
    c.setsockopt(this.#fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, intOption(1), 4);
    c.setsockopt(this.#fd, SOL_NETLINK, NETLINK_CAP_ACK, intOption(1), 4);

    // Kernels before 3.8 need the per-family handler rebound; newer ones treat both as no-ops.
    // Errors are ignored: they only mean the kernel does not need this step.
    await this.#request(this.#configCmd(NFQNL_CFG_CMD_PF_UNBIND, AF_INET, 0), true);
    await this.#request(this.#configCmd(NFQNL_CFG_CMD_PF_BIND, AF_INET, 0), true);
    await this.#request(this.#configCmd(NFQNL_CFG_CMD_BIND, AF_INET, this.queueNum), false);

    const t = this.#tx;
    t.header(
      this.#msgType(NFQNL_MSG_CONFIG),
      NLM_F_REQUEST | NLM_F_ACK,
      this.#seq++,
      AF_UNSPEC,
      this.queueNum,
    );
    t.attr(NFQA_CFG_PARAMS, 5, (o) => {
      t.view.setUint32(o, 0xffff, false); // copy range
      t.buf[o + 4] = NFQNL_COPY_PACKET;
    });
    await this.#request(t.finish(), false, "NFQNL_MSG_CONFIG params");

    if (opts.maxLen !== undefined) {
      t.header(
        this.#msgType(NFQNL_MSG_CONFIG),
        NLM_F_REQUEST | NLM_F_ACK,
        this.#seq++,
        AF_UNSPEC,
        this.queueNum,
      );
      t.attr(NFQA_CFG_QUEUE_MAXLEN, 4, (o) => t.view.setUint32(o, opts.maxLen!, false));
      await this.#request(t.finish(), false, "NFQNL_MSG_CONFIG queue maxlen");
    }
    if (opts.failOpen ?? true) {
      t.header(
        this.#msgType(NFQNL_MSG_CONFIG),
        NLM_F_REQUEST | NLM_F_ACK,
        this.#seq++,
        AF_UNSPEC,
        this.queueNum,
      );
      t.attr(NFQA_CFG_FLAGS, 4, (o) => t.view.setUint32(o, NFQA_CFG_F_FAIL_OPEN, false));
      t.attr(NFQA_CFG_MASK, 4, (o) => t.view.setUint32(o, NFQA_CFG_F_FAIL_OPEN, false));
      await this.#request(t.finish(), false, "NFQNL_MSG_CONFIG flags");
    }
  }

  #msgType(msg: number): number {
    return (NFNL_SUBSYS_QUEUE << 8) | msg;
  }

  #configCmd(cmd: number, pf: number, queue: number): Uint8Array<ArrayBuffer> {
    const t = this.#tx;
    t.header(
      this.#msgType(NFQNL_MSG_CONFIG),
      NLM_F_REQUEST | NLM_F_ACK,
      this.#seq++,
      AF_UNSPEC,
      queue,
    );
    t.attr(NFQA_CFG_CMD, 4, (o) => {
      t.buf[o] = cmd;
      t.view.setUint16(o + 2, pf, false);
    });
    return t.finish();
  }

  /** Sends one acked request and waits for its ack (packets arriving meanwhile are kept). */
  async #request(
    msg: Uint8Array<ArrayBuffer>,
    ignoreError: boolean,
    what = "NFQNL_MSG_CONFIG cmd",
  ) {
    const seq = new DataView(msg.buffer, msg.byteOffset).getUint32(8, HOST_LE);
    this.#send(msg, what);
    const deadline = Date.now() + 2000;
    while (!this.#acks.has(seq)) {
      for (const p of this.receive()) this.#early.push(p);
      if (this.#acks.has(seq)) break;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what}: no answer from the kernel`);
      await waitReadable(this.#fd, Math.min(left, 100));
    }
    const err = this.#acks.get(seq)!;
    this.#acks.delete(seq);
    if (err !== 0 && !ignoreError) throw new SysError(what, err);
  }

  #send(msg: Uint8Array<ArrayBuffer>, what: string): void {
    for (;;) {
      const n = Number(libc().sendto(this.#fd, msg, BigInt(msg.length), 0, this.#kernel, 12));
      if (n >= 0) return;
      const e = errno();
      if (e === EINTR) continue;
      throw new SysError(`sendto(${what})`, e);
    }
  }

  /** The netlink socket (for callers integrating their own poll loop). */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Drains every message pending on the socket without blocking and returns the queued
   * packets (at most a few hundred per call, so one burst cannot starve other work).
   */
  receive(): QueuedPacket[] {
    if (this.#closed) return [];
    const out: QueuedPacket[] = this.#early.splice(0);
    const c = libc();
    while (out.length < MAX_BATCH) {
      const n = Number(
        c.recv(this.#fd, this.#rx, BigInt(this.#rx.length), MSG_TRUNC | MSG_DONTWAIT),
      );
      if (n < 0) {
        const e = errno();
        if (e === EAGAIN) break;
        if (e === EINTR) continue;
        if (e === ENOBUFS) {
          this.stats.overruns++;
          continue;
        }
        throw new SysError("recv(netlink)", e);
      }
      if (n > this.#rx.length) {
        this.stats.oversized++;
        continue;
      }
      this.#parseDatagram(n, out);
    }
    return out;
  }

  #parseDatagram(n: number, out: QueuedPacket[]): void {
    const v = this.#rxView;
    let off = 0;
    while (off + NLMSG_HDRLEN <= n) {
      const len = v.getUint32(off, HOST_LE);
      if (len < NLMSG_HDRLEN || off + len > n) {
        this.stats.malformed++;
        return;
      }
      const type = v.getUint16(off + 4, HOST_LE);
      if (type === NLMSG_ERROR) {
        if (len >= NLMSG_HDRLEN + 4 + NLMSG_HDRLEN) {
          const err = -v.getInt32(off + NLMSG_HDRLEN, HOST_LE);
          // The original request's header follows the error code; its seq identifies it.
          const seq = v.getUint32(off + NLMSG_HDRLEN + 4 + 8, HOST_LE);
          if (seq !== 0 && seq < this.#seq) this.#acks.set(seq, err);
          if (err !== 0) {
            this.stats.kernelErrors++;
            this.stats.lastKernelError = err;
          }
        } else {
          this.stats.malformed++;
        }
      } else if (type === NLMSG_OVERRUN) {
        this.stats.overruns++;
      } else if (type === (this.#msgType(NFQNL_MSG_PACKET))) {
        const p = this.#parsePacket(off, len);
        if (p) {
          this.stats.received++;
          out.push(p);
        } else {
          this.stats.malformed++;
        }
      }
      // NLMSG_NOOP, NLMSG_DONE and other nfnetlink messages carry nothing for us.
      off += align4(len);
    }
  }

  #parsePacket(off: number, len: number): QueuedPacket | null {
    const v = this.#rxView;
    const end = off + len;
    let a = off + NLMSG_HDRLEN + NFGEN_HDRLEN;
    if (a > end) return null;
    let id = -1, hwProtocol = 0, hook = 0;
    let payload: Uint8Array | null = null;
    let capLen = -1;
    let mark: number | undefined, inIf: number | undefined, outIf: number | undefined;
    while (a + 4 <= end) {
      const alen = v.getUint16(a, HOST_LE);
      const atype = v.getUint16(a + 2, HOST_LE) & NLA_TYPE_MASK;
      if (alen < 4 || a + alen > end) return null;
      const val = a + 4;
      const vlen = alen - 4;
      switch (atype) {
        case NFQA_PACKET_HDR:
          if (vlen < 7) return null;
          id = v.getUint32(val, false);
          hwProtocol = v.getUint16(val + 4, false);
          hook = this.#rx[val + 6];
          break;
        case NFQA_PAYLOAD:
          payload = this.#rx.slice(val, val + vlen);
          break;
        case NFQA_CAP_LEN:
          if (vlen >= 4) capLen = v.getUint32(val, false);
          break;
        case NFQA_MARK:
          if (vlen >= 4) mark = v.getUint32(val, false);
          break;
        case NFQA_IFINDEX_INDEV:
          if (vlen >= 4) inIf = v.getUint32(val, false);
          break;
        case NFQA_IFINDEX_OUTDEV:
          if (vlen >= 4) outIf = v.getUint32(val, false);
          break;
      }
      a += align4(alen);
    }
    if (id < 0) return null;
    payload ??= new Uint8Array(0);
    return {
      id,
      hwProtocol,
      hook,
      payload,
      truncated: capLen > payload.length,
      mark,
      inIfindex: inIf,
      outIfindex: outIf,
    };
  }

  /**
   * Yields queued packets until `close()`. Each wakeup drains everything pending; waiting
   * happens off the JS thread.
   */
  async *packets(): AsyncGenerator<QueuedPacket> {
    while (!this.#closed) {
      const batch = this.receive();
      for (const p of batch) {
        yield p;
        if (this.#closed) return;
      }
      if (batch.length > 0) continue;
      this.#polling = true;
      try {
        await waitReadable(this.#fd, this.#pollIntervalMs);
      } finally {
        this.#polling = false;
      }
      if (this.#closed) this.#release();
    }
  }

  /**
   * Issues the verdict for packet `id`: accept (optionally replacing the packet with
   * `payload`, a whole IPv4 packet) or drop.
   */
  verdict(id: number, accept: boolean, payload?: Uint8Array): void {
    if (this.#closed) throw new Error("NfQueue is closed");
    const extra = payload ? align4(4 + payload.length) : 0;
    if (payload && payload.length > 0xffff - 4) throw new RangeError("replacement too large");
    const t = extra === 0 ? this.#tx : new Writer(NLMSG_HDRLEN + NFGEN_HDRLEN + 12 + extra);
    t.header(
      this.#msgType(NFQNL_MSG_VERDICT),
      NLM_F_REQUEST,
      this.#seq++,
      AF_UNSPEC,
      this.queueNum,
    );
    t.attr(NFQA_VERDICT_HDR, 8, (o) => {
      t.view.setUint32(o, accept ? NF_ACCEPT : NF_DROP, false);
      t.view.setUint32(o + 4, id, false);
    });
    if (payload) t.attr(NFQA_PAYLOAD, payload.length, (o) => t.buf.set(payload, o));
    this.#send(t.finish(), "NFQNL_MSG_VERDICT");
    this.stats.verdicts++;
    if (this.#seq >= 0xffffffff) this.#seq = 1;
  }

  /**
   * Unbinds and closes. Packets still waiting for a verdict are dropped by the kernel;
   * later ones follow the rule's bypass setting. A wait in progress ends at its timeout.
   */
  close(): void {
    if (this.#closed) return;
    try {
      this.#send(this.#configCmd(NFQNL_CFG_CMD_UNBIND, AF_INET, this.queueNum), "unbind");
    } catch {
      // The socket is going away anyway; closing it unbinds too.
    }
    this.#closed = true;
    // Closing while another thread polls the descriptor would let the number be reused under
    // that poll; the poller closes it when it returns instead.
    if (!this.#polling) this.#release();
  }

  #released = false;
  #release(): void {
    if (this.#released) return;
    this.#released = true;
    libc().close(this.#fd);
    this.#fd = -1;
  }
}
