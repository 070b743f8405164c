// UDP/IPv4 for the tunnel data path, in batches: recvmmsg/sendmmsg move up to `batch` datagrams
// per system call.
//
// The message headers, iovecs, addresses and packet slots live in one ArrayBuffer per direction,
// laid out as the kernel's struct mmsghdr arrays and built once. Its native address comes from
// addressOf (libc.ts), since Deno.UnsafePointer is off limits with a narrowed --allow-ffi; the
// kernel then reads and writes JS memory directly, with no copy through a native allocation
// (bench/udp_bench.ts measures both). Received packets are views into the receive slots, valid
// until the next recvBatch call.
//
// Per-packet methods never throw: failures are counted in `stats` and reported as return values.

import {
  addressOf,
  check,
  EAGAIN,
  EINTR,
  EINVAL,
  errno,
  libc,
  SysError,
  waitReadable,
  waitWritable,
} from "./libc.ts";

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const SO_REUSEPORT = 15;
const SO_ATTACH_REUSEPORT_CBPF = 51;
const SO_MEMINFO = 55;
/** Index of the drop counter in SO_MEMINFO's array (linux/sock_diag.h SK_MEMINFO_DROPS). */
const SK_MEMINFO_DROPS = 8;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;

/** struct mmsghdr on LP64 Linux: a 56-byte msghdr followed by msg_len. */
const MMSGHDR = 64;
const H_NAME = 0;
const H_NAMELEN = 8;
const H_IOV = 16;
const H_IOVLEN = 24;
const H_CONTROL = 32;
const H_CONTROLLEN = 40;
const H_FLAGS = 48;
const H_LEN = 56;
const IOVEC = 16;
const SOCKADDR_IN = 16;
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
const UDP_GRO = 104;
/** CMSG_SPACE of a 2- or 4-byte value: a 16-byte cmsghdr, the data padded to 8. */
const CMSG_SPACE = 24;
/** UDP_MAX_SEGMENTS of the oldest kernels with UDP GSO (later ones allow 128). */
const GSO_MAX_SEGMENTS = 64;
/** What one coalesced receive (UDP GRO) can hold. */
const GRO_SLOT = 65536;

/** The largest UDP payload IPv4 can carry. */
export const MAX_UDP_PAYLOAD = 65507;

export interface UdpOptions {
  /** Datagrams per recvmmsg/sendmmsg call (default 64). */
  batch?: number;
  /** Slot size: larger datagrams are dropped on receive and sent singly (default 65507). */
  maxDatagram?: number;
  /** Requested SO_RCVBUF and SO_SNDBUF (default 4 MiB); the kernel may grant less. */
  bufferBytes?: number;
  /** "mmsg" (default) or "plain" recvfrom/sendto, one call per datagram. */
  mode?: "mmsg" | "plain";
  /**
   * SO_REUSEPORT: the socket joins a group of sockets on the same address and port, among which
   * the kernel spreads (or, with steerReusePort, sorts) arriving datagrams. Only sockets created
   * by the same user can join, so a group of root's sockets stays closed to the dropped user.
   */
  reusePort?: boolean;
  /** Requested SO_SNDBUF when it should differ from bufferBytes. */
  sendBufferBytes?: number;
}

/** One classic BPF instruction (struct sock_filter). */
export interface BpfInstruction {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

export interface Datagram {
  data: Uint8Array;
  /** IPv4 address as a 32-bit number (a.b.c.d = a<<24 | b<<16 | c<<8 | d). */
  addr: number;
  port: number;
}

/** Receives one datagram: a view of a receive slot (valid until the next receive), its source. */
export type OnDatagram = (data: Uint8Array, addr: number, port: number) => void;

export interface UdpStats {
  received: number;
  sent: number;
  /** Datagrams larger than maxDatagram, dropped. */
  truncated: number;
  recvErrors: number;
  /** Datagrams not sent: socket buffer full or an error. */
  sendFailures: number;
  /** errno of the latest failure, 0 if none. */
  lastErrno: number;
}

function sockaddrIn(addr: number, port: number): Uint8Array {
  const sa = new Uint8Array(SOCKADDR_IN);
  const dv = new DataView(sa.buffer);
  dv.setUint16(0, AF_INET, true);
  dv.setUint16(2, port, false);
  dv.setUint32(4, addr, false);
  return sa;
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 0 && port <= 65535;
}

function validAddr(addr: number): boolean {
  return Number.isInteger(addr) && addr >= 0 && addr <= 0xffffffff;
}

/**
 * `count` mmsghdr entries, each with one iovec over its own `slot`-byte buffer and its own
 * sockaddr_in, all inside one ArrayBuffer whose address is fixed for its lifetime.
 */
class MessageArea {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly u32: Uint32Array;
  readonly dataAt: number;
  readonly nameAt: number;
  readonly iovAt: number;
  /** Per entry: CMSG_SPACE bytes for one control message (0 when `withControl` is false). */
  readonly controlAt: number;
  readonly base: bigint;
  /** Per slot: a view of the full packet buffer and of its sockaddr_in. */
  readonly slots: Uint8Array[] = [];
  readonly names: Uint8Array[] = [];

  constructor(readonly count: number, readonly slot: number, withControl = false) {
    const iovAt = count * MMSGHDR;
    this.iovAt = iovAt;
    this.nameAt = iovAt + count * IOVEC;
    this.controlAt = this.nameAt + count * SOCKADDR_IN;
    const controlEnd = this.controlAt + (withControl ? count * CMSG_SPACE : 0);
    this.dataAt = Math.ceil(controlEnd / 64) * 64;
    const stride = Math.ceil(slot / 64) * 64;
    const buffer = new ArrayBuffer(this.dataAt + count * stride);
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
    this.u32 = new Uint32Array(buffer, 0, this.dataAt / 4);
    const base = addressOf(this.bytes);
    this.base = base;
    for (let i = 0; i < count; i++) {
      if (withControl) {
        const c = this.controlAt + i * CMSG_SPACE;
        this.view.setBigUint64(i * MMSGHDR + H_CONTROL, base + BigInt(c), true);
      }
      const h = i * MMSGHDR;
      const iov = iovAt + i * IOVEC;
      const name = this.nameAt + i * SOCKADDR_IN;
      const data = this.dataAt + i * stride;
      this.view.setBigUint64(h + H_NAME, base + BigInt(name), true);
      this.view.setUint32(h + H_NAMELEN, SOCKADDR_IN, true);
      this.view.setBigUint64(h + H_IOV, base + BigInt(iov), true);
      this.view.setBigUint64(h + H_IOVLEN, 1n, true);
      this.view.setBigUint64(iov, base + BigInt(data), true);
      this.view.setBigUint64(iov + 8, BigInt(slot), true);
      this.view.setUint16(name, AF_INET, true);
      this.slots.push(this.bytes.subarray(data, data + slot));
      this.names.push(this.bytes.subarray(name, name + SOCKADDR_IN));
    }
  }

  /** The entries from `first` on, as the msgvec argument. */
  from(first: number): Uint8Array {
    return first === 0 ? this.bytes : this.bytes.subarray(first * MMSGHDR);
  }
}

/**
 * mmsghdr entries for UDP GSO sends: each covers a run of send slots (their iovecs are adjacent
 * in the send area) and carries a UDP_SEGMENT control message with the datagram size, so the
 * kernel sends the run as one large buffer that it cuts into the same datagrams.
 */
class GsoArea {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly firstSlot: number[];
  readonly slotCount: number[];

  constructor(readonly count: number) {
    const controlAt = count * MMSGHDR;
    const buffer = new ArrayBuffer(controlAt + count * CMSG_SPACE);
    this.bytes = new Uint8Array(buffer);
    this.view = new DataView(buffer);
    this.firstSlot = new Array<number>(count).fill(0);
    this.slotCount = new Array<number>(count).fill(0);
    const base = addressOf(this.bytes);
    for (let i = 0; i < count; i++) {
      const c = controlAt + i * CMSG_SPACE;
      this.view.setBigUint64(i * MMSGHDR + H_CONTROL, base + BigInt(c), true);
      this.view.setBigUint64(c, 18n, true); // cmsg_len = CMSG_LEN(2)
      this.view.setInt32(c + 8, SOL_UDP, true);
      this.view.setInt32(c + 12, UDP_SEGMENT, true);
    }
  }

  /** Entry `e` sends `n` slots of `tx` from `first`, cut into `size`-byte datagrams. */
  set(e: number, tx: MessageArea, first: number, n: number, size: number): void {
    const h = e * MMSGHDR;
    const v = this.view;
    v.setBigUint64(h + H_NAME, tx.base + BigInt(tx.nameAt + first * SOCKADDR_IN), true);
    v.setUint32(h + H_NAMELEN, SOCKADDR_IN, true);
    v.setBigUint64(h + H_IOV, tx.base + BigInt(tx.iovAt + first * IOVEC), true);
    v.setBigUint64(h + H_IOVLEN, BigInt(n), true);
    v.setBigUint64(h + H_CONTROLLEN, n > 1 ? BigInt(CMSG_SPACE) : 0n, true);
    if (n > 1) v.setUint16(this.count * MMSGHDR + e * CMSG_SPACE + 16, size, true);
    this.firstSlot[e] = first;
    this.slotCount[e] = n;
  }

  from(first: number): Uint8Array {
    return first === 0 ? this.bytes : this.bytes.subarray(first * MMSGHDR);
  }
}

export class UdpSocket {
  readonly stats: UdpStats = {
    received: 0,
    sent: 0,
    truncated: 0,
    recvErrors: 0,
    sendFailures: 0,
    lastErrno: 0,
  };
  /** Socket buffer sizes the kernel actually granted (it reports double the request). */
  bufferSizes: { receive: number; send: number };
  readonly mode: "mmsg" | "plain";
  readonly batch: number;
  readonly maxDatagram: number;
  #fd: number;
  #rx: MessageArea;
  #tx: MessageArea | null;
  /** UDP GSO: runs of same-size datagrams to one address go out as one buffer. */
  #gso: GsoArea | null = null;
  /** Datagrams larger than this are not sent with GSO (the kernel refused such a size). */
  #gsoMaxSize = 0;
  /** UDP GRO: the kernel may deliver several datagrams of one sender in one receive. */
  #gro = false;
  /** Datagrams waiting in the send slots for flush(). */
  #queued = 0;
  #nameLen = new Uint32Array(1);
  #nameLenBytes = new Uint8Array(this.#nameLen.buffer);

  private constructor(fd: number, opts: UdpOptions) {
    this.#fd = fd;
    this.mode = opts.mode ?? "mmsg";
    this.batch = opts.batch ?? 64;
    this.maxDatagram = opts.maxDatagram ?? MAX_UDP_PAYLOAD;
    if (!Number.isInteger(this.batch) || this.batch < 1 || this.batch > 1024) {
      throw new RangeError(`batch ${this.batch} not in 1..1024`);
    }
    if (
      !Number.isInteger(this.maxDatagram) || this.maxDatagram < 1 ||
      this.maxDatagram > MAX_UDP_PAYLOAD
    ) {
      throw new RangeError(`maxDatagram ${this.maxDatagram} not in 1..${MAX_UDP_PAYLOAD}`);
    }
    this.#rx = new MessageArea(this.batch, this.maxDatagram);
    this.#tx = this.mode === "mmsg" ? new MessageArea(this.batch, this.maxDatagram) : null;
    const want = opts.bufferBytes ?? 4 << 20;
    this.bufferSizes = {
      receive: this.#setBuffer(SO_RCVBUFFORCE, SO_RCVBUF, want),
      send: this.#setBuffer(SO_SNDBUFFORCE, SO_SNDBUF, opts.sendBufferBytes ?? want),
    };
  }

  /** Opens a non-blocking, close-on-exec socket bound to host:port (port 0: any free port). */
  static bind(addr: number, port: number, opts: UdpOptions = {}): UdpSocket {
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new RangeError(`port ${port} not in 0..65535`);
    }
    if (!validAddr(addr)) throw new RangeError(`address ${addr} is not an IPv4 address`);
    const sa = sockaddrIn(addr, port);
    const fd = check(
      "socket(AF_INET, SOCK_DGRAM)",
      libc().socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0),
    );
    try {
      // No SO_REUSEADDR: on a UDP socket it lets any local user's socket that sets it too bind
      // the same port and take its datagrams. SO_REUSEPORT checks that the user is the same.
      const one = new Uint8Array(new Uint32Array([1]).buffer);
      if (opts.reusePort) {
        check("setsockopt(SO_REUSEPORT)", libc().setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, one, 4));
      }
      const sock = new UdpSocket(fd, opts);
      if (libc().bind(fd, sa, SOCKADDR_IN) < 0) {
        throw new SysError(
          `bind(${addr >>> 24}.${(addr >>> 16) & 255}.${(addr >>> 8) & 255}.${addr & 255}:${port})`,
          errno(),
        );
      }
      return sock;
    } catch (e) {
      libc().close(fd);
      throw e;
    }
  }

  /**
   * Asks for a new receive buffer size (the kernel doubles it for its accounting); what the
   * kernel granted. Shrinking needs no privilege, growing past rmem_max does.
   */
  setReceiveBuffer(bytes: number): number {
    const receive = this.#setBuffer(SO_RCVBUFFORCE, SO_RCVBUF, bytes);
    this.bufferSizes = { ...this.bufferSizes, receive };
    return receive;
  }

  /** Tries the privileged option (ignores rmem_max/wmem_max) first, then the ordinary one. */
  #setBuffer(force: number, plain: number, bytes: number): number {
    const v = new Uint8Array(new Int32Array([Math.min(bytes, 0x3fffffff)]).buffer);
    if (libc().setsockopt(this.#fd, SOL_SOCKET, force, v, 4) < 0) {
      libc().setsockopt(this.#fd, SOL_SOCKET, plain, v, 4); // capped by the sysctl, never fatal
    }
    const out = new Int32Array(1);
    const len = new Uint32Array([4]);
    libc().getsockopt(
      this.#fd,
      SOL_SOCKET,
      plain,
      new Uint8Array(out.buffer),
      new Uint8Array(len.buffer),
    );
    return out[0];
  }

  /**
   * Datagrams the kernel dropped for this socket so far (a full receive buffer, mostly): the
   * load shed before any of our code saw it. null when the kernel does not say (SO_MEMINFO).
   */
  kernelDrops(): number | null {
    if (this.#fd < 0) return null;
    const info = new Uint32Array(16); // room for kernels that report more than the 9 we read
    const len = new Uint32Array([info.byteLength]);
    const r = libc().getsockopt(
      this.#fd,
      SOL_SOCKET,
      SO_MEMINFO,
      new Uint8Array(info.buffer),
      new Uint8Array(len.buffer),
    );
    return r < 0 || len[0] < 4 * (SK_MEMINFO_DROPS + 1) ? null : info[SK_MEMINFO_DROPS];
  }

  get fd(): number {
    return this.#fd;
  }

  /** The bound address and port (useful after binding port 0). */
  localAddress(): { addr: number; port: number } {
    const sa = new Uint8Array(SOCKADDR_IN);
    const len = new Uint32Array([SOCKADDR_IN]);
    check("getsockname", libc().getsockname(this.#fd, sa, new Uint8Array(len.buffer)));
    const dv = new DataView(sa.buffer);
    return { addr: dv.getUint32(4, false), port: dv.getUint16(2, false) };
  }

  get localPort(): number {
    return this.localAddress().port;
  }

  #setUdpOption(option: number, value: number): boolean {
    const v = new Uint8Array(new Int32Array([value]).buffer);
    return libc().setsockopt(this.#fd, SOL_UDP, option, v, 4) === 0;
  }

  /**
   * Sends runs of equal-size datagrams to one address as one buffer the kernel cuts up (UDP GSO,
   * Linux 4.18); the datagrams on the wire are the same. False when the kernel lacks it.
   */
  enableGso(): boolean {
    if (this.#tx === null || this.#fd < 0) return false;
    // Setting the per-socket size to 0 (off) tells whether the kernel knows the option at all;
    // the size then travels with each send.
    if (!this.#setUdpOption(UDP_SEGMENT, 0)) return false;
    this.#gso = new GsoArea(this.batch);
    this.#gsoMaxSize = this.maxDatagram;
    return true;
  }

  /**
   * Lets the kernel hand over several datagrams of one sender in one receive (UDP GRO, Linux
   * 5.0); recvBatch still returns them one by one. False when the kernel lacks it.
   */
  enableGro(): boolean {
    if (this.mode !== "mmsg" || this.#fd < 0 || this.#gro) return this.#gro;
    if (!this.#setUdpOption(UDP_GRO, 1)) return false;
    this.#rx = new MessageArea(this.batch, GRO_SLOT, true);
    this.#gro = true;
    return true;
  }

  get offloads(): { gso: boolean; gro: boolean } {
    return { gso: this.#gso !== null, gro: this.#gro };
  }

  /**
   * Takes up to `max` queued datagrams without blocking; an empty array when none is queued.
   * Each `data` is a view into this socket's receive slots, overwritten by the next call.
   */
  recvBatch(max = this.batch): Datagram[] {
    const out: Datagram[] = [];
    this.recvEach((data, addr, port) => void out.push({ data, addr, port }), max);
    return out;
  }

  /**
   * recvBatch() handing each datagram to `onDatagram` as it is read, with no object per
   * datagram (a server under a flood reads tens of thousands a second). Returns how many.
   */
  recvEach(onDatagram: OnDatagram, max = this.batch): number {
    if (this.#fd < 0 || !(max >= 1)) return 0;
    max = Math.min(Math.floor(max), this.batch);
    const n = this.mode === "mmsg"
      ? this.#recvMmsg(max, onDatagram)
      : this.#recvPlain(max, onDatagram);
    this.stats.received += n;
    return n;
  }

  #recvMmsg(max: number, onDatagram: OnDatagram): number {
    const rx = this.#rx;
    const gro = this.#gro;
    if (gro) {
      for (let i = 0; i < max; i++) rx.u32[(i * MMSGHDR + H_CONTROLLEN) >> 2] = CMSG_SPACE;
    }
    let n: number;
    for (;;) {
      n = libc().recvmmsg(this.#fd, rx.bytes, max, MSG_DONTWAIT, null);
      if (n >= 0) break;
      const code = errno();
      if (code === EINTR) continue;
      if (code !== EAGAIN) this.#recvFailed(code);
      return 0;
    }
    let got = 0;
    const u32 = rx.u32;
    const view = rx.view;
    for (let i = 0; i < n; i++) {
      const h = (i * MMSGHDR) >> 2;
      u32[h + (H_NAMELEN >> 2)] = SOCKADDR_IN; // the kernel overwrote it; reset for next time
      if (u32[h + (H_FLAGS >> 2)] & MSG_TRUNC) {
        this.stats.truncated++;
        continue;
      }
      const name = rx.nameAt + i * SOCKADDR_IN;
      const addr = view.getUint32(name + 4, false);
      const port = view.getUint16(name + 2, false);
      const len = u32[h + (H_LEN >> 2)];
      const size = gro ? this.#groSize(rx, i) : 0;
      if (size === 0 || size >= len) {
        onDatagram(rx.slots[i].subarray(0, len), addr, port);
        got++;
        continue;
      }
      // Several datagrams of `size` bytes (the last may be shorter), as they were sent.
      for (let at = 0; at < len; at += size) {
        onDatagram(rx.slots[i].subarray(at, Math.min(len, at + size)), addr, port);
        got++;
      }
    }
    return got;
  }

  /** The datagram size of a coalesced receive, from its UDP_GRO control message; 0 if none. */
  #groSize(rx: MessageArea, i: number): number {
    const u32 = rx.u32;
    if (u32[(i * MMSGHDR + H_CONTROLLEN) >> 2] < 20) return 0;
    const c = (rx.controlAt + i * CMSG_SPACE) >> 2;
    if (u32[c + 2] !== SOL_UDP || u32[c + 3] !== UDP_GRO) return 0;
    return u32[c + 4];
  }

  #recvPlain(max: number, onDatagram: OnDatagram): number {
    const rx = this.#rx;
    let got = 0;
    const size = BigInt(this.maxDatagram);
    for (let i = 0; i < max;) {
      this.#nameLen[0] = SOCKADDR_IN;
      const n = Number(
        libc().recvfrom(
          this.#fd,
          rx.slots[i],
          size,
          MSG_DONTWAIT | MSG_TRUNC,
          rx.names[i],
          this.#nameLenBytes,
        ),
      );
      if (n < 0) {
        const code = errno();
        if (code === EINTR) continue;
        if (code !== EAGAIN) this.#recvFailed(code);
        break;
      }
      if (n > this.maxDatagram) { // MSG_TRUNC makes recvfrom report the full length
        this.stats.truncated++;
        continue;
      }
      const name = rx.nameAt + i * SOCKADDR_IN;
      i++;
      got++;
      onDatagram(
        rx.slots[i - 1].subarray(0, n),
        rx.view.getUint32(name + 4, false),
        rx.view.getUint16(name + 2, false),
      );
    }
    return got;
  }

  #recvFailed(code: number): void {
    this.stats.recvErrors++;
    this.stats.lastErrno = code;
  }

  #sendFailed(code: number, count: number): void {
    this.stats.sendFailures += count;
    this.stats.lastErrno = code;
  }

  /** Sends one datagram; false (and counted) if it could not be queued. */
  sendTo(data: Uint8Array, addr: number, port: number): boolean {
    if (this.#fd < 0) return false;
    if (!validAddr(addr) || !validPort(port)) {
      this.#sendFailed(EINVAL, 1);
      return false;
    }
    const sa = sockaddrIn(addr, port);
    for (;;) {
      const n = Number(
        libc().sendto(this.#fd, data, BigInt(data.length), MSG_DONTWAIT, sa, SOCKADDR_IN),
      );
      if (n >= 0) {
        this.stats.sent++;
        return true;
      }
      const code = errno();
      if (code === EINTR) continue;
      this.#sendFailed(code, 1);
      return false;
    }
  }

  /**
   * Sends datagrams in order, up to `batch` per system call, and returns how many went out.
   * One the kernel refuses is skipped; once the send buffer is full the rest are dropped, as a
   * router would (UDP is lossy anyway). Both are counted in stats.sendFailures.
   */
  sendBatch(datagrams: readonly Datagram[]): number {
    if (this.#fd < 0) return 0;
    this.flush(); // queued datagrams go first, and the slots are needed
    const tx = this.#tx;
    let sent = 0;
    let i = 0;
    while (i < datagrams.length) {
      const n = tx === null ? 0 : this.#fill(tx, datagrams, i);
      if (n === 0) {
        // Plain mode, or a datagram larger than a slot: one sendto.
        const d = datagrams[i++];
        if (this.sendTo(d.data, d.addr, d.port)) sent++;
        else if (this.stats.lastErrno === EAGAIN) return this.#dropRest(datagrams.length - i, sent);
        continue;
      }
      const r = this.#sendSlots(tx!, n);
      sent += r.sent;
      if (r.handled < n) return this.#dropRest(datagrams.length - (i + r.handled), sent);
      i += n;
    }
    return sent;
  }

  /**
   * The send slot the next queue() call fills (maxDatagram bytes), for building a datagram in
   * place; undefined in plain mode. Queued datagrams are sent first when every slot is taken.
   */
  sendSlot(): Uint8Array | undefined {
    const tx = this.#tx;
    if (tx === null || this.#fd < 0) return undefined;
    if (this.#queued === tx.count) this.flush();
    return tx.slots[this.#queued];
  }

  /**
   * Queues a datagram for the next flush(). One built in the buffer sendSlot() returned is taken
   * where it lies, anything else is copied. What cannot be queued (plain mode, larger than a
   * slot) is sent at once, after the queue. False when that or the port fails.
   */
  queue(data: Uint8Array, addr: number, port: number): boolean {
    const tx = this.#tx;
    if (tx === null || data.length > tx.slot || !validPort(port)) {
      this.flush();
      return this.sendTo(data, addr, port);
    }
    if (this.#queued === tx.count) this.flush();
    const i = this.#queued++;
    const slot = tx.slots[i];
    if (data.buffer !== slot.buffer || data.byteOffset !== slot.byteOffset) slot.set(data);
    tx.u32[(tx.count * MMSGHDR + i * IOVEC + 8) >> 2] = data.length; // iov_len, low half
    const name = tx.nameAt + i * SOCKADDR_IN;
    tx.view.setUint16(name + 2, port, false);
    tx.view.setUint32(name + 4, addr >>> 0, false);
    return true;
  }

  /** Datagrams queued and not yet flushed. */
  get queued(): number {
    return this.#queued;
  }

  /**
   * Sends the queued datagrams with as few sendmmsg calls as the kernel allows; returns how many
   * went out. Failures are handled as in sendBatch.
   */
  flush(): number {
    const n = this.#queued;
    if (n === 0) return 0;
    this.#queued = 0;
    const tx = this.#tx!;
    if (this.#fd < 0) return 0;
    const r = this.#sendSlots(tx, n);
    return r.handled < n ? this.#dropRest(n - r.handled, r.sent) : r.sent;
  }

  /**
   * sendmmsg over the first `n` filled slots of `tx`. A datagram the kernel refuses is skipped
   * (counted); a full send buffer stops it, leaving `handled` < n for the caller to drop.
   */
  #sendSlots(tx: MessageArea, n: number, from = 0): { sent: number; handled: number } {
    if (this.#gso !== null && n - from > 1) return this.#sendGso(tx, this.#gso, n, from);
    let k = from;
    let sent = 0;
    while (k < n) {
      const r = libc().sendmmsg(this.#fd, tx.from(k), n - k, MSG_DONTWAIT);
      if (r > 0) {
        k += r;
        sent += r;
        this.stats.sent += r;
        continue;
      }
      const code = errno();
      if (code === EINTR) continue;
      if (code === EAGAIN) {
        this.stats.lastErrno = code;
        return { sent, handled: k };
      }
      this.#sendFailed(code, 1); // this one datagram is refused: skip it
      k++;
    }
    return { sent, handled: n };
  }

  /** Groups slots from..n into runs (one destination, one size, the last may be shorter). */
  #runs(tx: MessageArea, gso: GsoArea, n: number, from: number): number {
    const u32 = tx.u32;
    const iovLenAt = (tx.iovAt + 8) >> 2;
    const nameAt = tx.nameAt >> 2;
    let runs = 0;
    let k = from;
    while (k < n) {
      const size = u32[iovLenAt + k * (IOVEC >> 2)];
      const a0 = u32[nameAt + k * 4];
      const a1 = u32[nameAt + k * 4 + 1];
      let m = 1;
      let bytes = size;
      if (size <= this.#gsoMaxSize) {
        while (k + m < n && m < GSO_MAX_SEGMENTS) {
          const j = k + m;
          const len = u32[iovLenAt + j * (IOVEC >> 2)];
          if (len > size || bytes + len > MAX_UDP_PAYLOAD) break;
          if (u32[nameAt + j * 4] !== a0 || u32[nameAt + j * 4 + 1] !== a1) break;
          m++;
          bytes += len;
          if (len < size) break; // only the last may be shorter
        }
      }
      gso.set(runs++, tx, k, m, size);
      k += m;
    }
    return runs;
  }

  /** sendmmsg over runs of slots, each run one UDP GSO send; as #sendSlots otherwise. */
  #sendGso(
    tx: MessageArea,
    gso: GsoArea,
    n: number,
    from: number,
  ): { sent: number; handled: number } {
    const runs = this.#runs(tx, gso, n, from);
    let r = 0;
    let sent = 0;
    while (r < runs) {
      const got = libc().sendmmsg(this.#fd, gso.from(r), runs - r, MSG_DONTWAIT);
      if (got > 0) {
        for (let i = r; i < r + got; i++) sent += gso.slotCount[i];
        r += got;
        continue;
      }
      const code = errno();
      if (code === EINTR) continue;
      const first = gso.firstSlot[r];
      if (code === EAGAIN) {
        this.stats.lastErrno = code;
        this.stats.sent += sent;
        return { sent, handled: first };
      }
      const count = gso.slotCount[r];
      if (count > 1) {
        // The kernel refused to cut this size (e.g. larger than the path MTU): no GSO for it
        // from now on, and the rest goes out the plain way.
        this.#gsoMaxSize = Math.min(
          this.#gsoMaxSize,
          tx.u32[(tx.iovAt + 8 + first * IOVEC) >> 2] - 1,
        );
        this.stats.sent += sent;
        const rest = this.#sendSlots(tx, n, first);
        return { sent: sent + rest.sent, handled: rest.handled };
      }
      this.#sendFailed(code, 1); // this one datagram is refused: skip it
      r++;
    }
    this.stats.sent += sent;
    return { sent, handled: n };
  }

  /** Copies datagrams from `first` into the send slots; stops before one that doesn't fit. */
  #fill(tx: MessageArea, datagrams: readonly Datagram[], first: number): number {
    const u32 = tx.u32;
    const view = tx.view;
    const iovLenAt = (tx.count * MMSGHDR + 8) >> 2;
    let n = 0;
    while (n < tx.count && first + n < datagrams.length) {
      const d = datagrams[first + n];
      if (d.data.length > tx.slot || !validPort(d.port)) break; // sendTo deals with these
      tx.slots[n].set(d.data);
      u32[iovLenAt + n * (IOVEC >> 2)] = d.data.length; // low half of iov_len; high stays 0
      const name = tx.nameAt + n * SOCKADDR_IN;
      view.setUint16(name + 2, d.port, false);
      view.setUint32(name + 4, d.addr >>> 0, false);
      n++;
    }
    return n;
  }

  #dropRest(count: number, sent: number): number {
    this.stats.sendFailures += count;
    return sent;
  }

  /** Resolves true once a datagram is waiting, false on timeout (or after close). */
  waitReadable(timeoutMs: number): Promise<boolean> {
    if (this.#fd < 0) return Promise.resolve(false);
    return waitReadable(this.#fd, timeoutMs);
  }

  /** Resolves true once the send buffer has room, false on timeout. */
  waitWritable(timeoutMs: number): Promise<boolean> {
    if (this.#fd < 0) return Promise.resolve(false);
    return waitWritable(this.#fd, timeoutMs);
  }

  /**
   * Gives this socket's SO_REUSEPORT group a classic BPF program that picks, per datagram, the
   * group member that receives it: the program sees the UDP payload from its first byte and
   * returns a member's index (the order the members were bound in); any other value leaves the
   * choice to the kernel's hash. False when the kernel refuses (then nothing changed).
   */
  steerReusePort(program: readonly BpfInstruction[]): boolean {
    if (this.#fd < 0 || program.length === 0 || program.length > 4096) return false;
    const filter = new Uint8Array(8 * program.length);
    const fv = new DataView(filter.buffer);
    program.forEach((ins, i) => {
      fv.setUint16(8 * i, ins.code, true);
      fv.setUint8(8 * i + 2, ins.jt);
      fv.setUint8(8 * i + 3, ins.jf);
      fv.setUint32(8 * i + 4, ins.k, true);
    });
    // struct sock_fprog: u16 len, 6 bytes of padding, the filter's address
    const fprog = new Uint8Array(16);
    const pv = new DataView(fprog.buffer);
    pv.setUint16(0, program.length, true);
    pv.setBigUint64(8, addressOf(filter), true);
    const ok = libc().setsockopt(this.#fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog, 16) === 0;
    filter.fill(0); // kept alive (and reachable) until here: the kernel copied it
    return ok;
  }

  close(): void {
    if (this.#fd < 0) return;
    libc().close(this.#fd);
    this.#fd = -1;
  }
}
