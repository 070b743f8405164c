// The load generator's sending side: one UDP socket on 0.0.0.0 for all of its source addresses.
// Each datagram carries an IP_PKTINFO control message naming its source address, so one
// sendmmsg call sends a whole tick's datagrams from ~2000 addresses, and one socket receives
// every reply (they all come back to its port). The generator shares the machine with the
// server under test: one system call per tick instead of one per datagram, and one descriptor
// to poll instead of thousands, leaves the server the CPU it would have on its own machine.

import { UdpSocket } from "../../ffi/udp.ts";
import { addressOf, EAGAIN, EINTR, errno, libc } from "../../ffi/libc.ts";

const MMSGHDR = 64;
const IOVEC = 16;
const SOCKADDR_IN = 16;
/** cmsghdr (16 bytes) + struct in_pktinfo (12), padded to 8. */
const PKTINFO_SPACE = 32;
const IPPROTO_IP = 0;
const IP_PKTINFO = 8;
const MSG_DONTWAIT = 0x40;
const AF_INET = 2;

export class SourceSocket {
  readonly sock: UdpSocket;
  /** Datagrams the kernel refused (send buffer full after retries, or an error). */
  sendFailures = 0;
  /** Times a full send buffer was waited out (up to 1 ms each). */
  sendWaits = 0;
  sent = 0;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #slots: Uint8Array[] = [];
  readonly #slotAt: number;
  readonly #slot: number;
  /** Address of #bytes, as a number (user addresses fit in 53 bits): no BigInt per datagram. */
  readonly #base: number;
  #queued = 0;

  constructor(readonly batch = 256, maxDatagram = 1344) {
    this.sock = UdpSocket.bind(0, 0, { batch: 64, maxDatagram: 2048, bufferBytes: 4 << 20 });
    const iovAt = batch * MMSGHDR;
    const nameAt = iovAt + batch * IOVEC;
    const controlAt = nameAt + batch * SOCKADDR_IN;
    this.#slotAt = Math.ceil((controlAt + batch * PKTINFO_SPACE) / 64) * 64;
    this.#slot = Math.ceil(maxDatagram / 64) * 64;
    const buffer = new ArrayBuffer(this.#slotAt + batch * this.#slot);
    this.#bytes = new Uint8Array(buffer);
    this.#view = new DataView(buffer);
    const base = addressOf(this.#bytes);
    this.#base = Number(base);
    const v = this.#view;
    for (let i = 0; i < batch; i++) {
      const h = i * MMSGHDR;
      const iov = iovAt + i * IOVEC;
      const name = nameAt + i * SOCKADDR_IN;
      const control = controlAt + i * PKTINFO_SPACE;
      const data = this.#slotAt + i * this.#slot;
      v.setBigUint64(h, base + BigInt(name), true);
      v.setUint32(h + 8, SOCKADDR_IN, true);
      v.setBigUint64(h + 16, base + BigInt(iov), true);
      v.setBigUint64(h + 24, 1n, true);
      v.setBigUint64(h + 32, base + BigInt(control), true);
      v.setBigUint64(h + 40, BigInt(PKTINFO_SPACE), true);
      v.setBigUint64(iov, base + BigInt(data), true);
      v.setUint16(name, AF_INET, true);
      v.setBigUint64(control, 28n, true); // cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo))
      v.setInt32(control + 8, IPPROTO_IP, true);
      v.setInt32(control + 12, IP_PKTINFO, true);
      this.#slots.push(this.#bytes.subarray(data, data + this.#slot));
    }
  }

  /** Queues one datagram from `src` to `dst`:`port` (copied); a full batch goes out at once. */
  queue(data: Uint8Array, src: number, dst: number, port: number): void {
    if (this.#queued === this.batch) this.flush();
    const i = this.#queued;
    this.#slots[i].set(data);
    this.#address(i, src, dst, port, this.#base + this.#slotAt + i * this.#slot, data.length);
  }

  /**
   * Queues `length` bytes at `offset` of `bytes` without copying them: the entry points at them.
   * `bytes` must stay as it is until the next flush(); `base` is addressOf(bytes) as a number.
   */
  queueAt(
    bytes: Uint8Array,
    base: number,
    offset: number,
    length: number,
    src: number,
    dst: number,
    port: number,
  ): void {
    if (offset < 0 || offset + length > bytes.length) throw new RangeError("queueAt: outside");
    if (this.#queued === this.batch) this.flush();
    this.#address(this.#queued, src, dst, port, base + offset, length);
  }

  /** Fills in entry `i` (its data at `data`, `length` bytes) and counts it queued. */
  #address(i: number, src: number, dst: number, port: number, data: number, length: number) {
    const v = this.#view;
    const iov = this.batch * MMSGHDR + i * IOVEC;
    v.setUint32(iov, data % 0x1_0000_0000, true);
    v.setUint32(iov + 4, Math.floor(data / 0x1_0000_0000), true);
    v.setUint32(iov + 8, length, true);
    const name = this.batch * (MMSGHDR + IOVEC) + i * SOCKADDR_IN;
    v.setUint16(name + 2, port, false);
    v.setUint32(name + 4, dst >>> 0, false);
    // in_pktinfo.ipi_spec_dst: the source address of the datagram
    v.setUint32(this.batch * (MMSGHDR + IOVEC + SOCKADDR_IN) + i * PKTINFO_SPACE + 20, src >>> 0);
    this.#queued = i + 1;
  }

  /** Sends what is queued (sendmmsg); a full send buffer is waited out briefly, never skipped. */
  flush(): void {
    const n = this.#queued;
    this.#queued = 0;
    let k = 0;
    let waits = 0;
    while (k < n) {
      const r = libc().sendmmsg(
        this.sock.fd,
        this.#bytes.subarray(k * MMSGHDR),
        n - k,
        MSG_DONTWAIT,
      );
      if (r > 0) {
        k += r;
        this.sent += r;
        continue;
      }
      const code = errno();
      if (code === EINTR) continue;
      if (code === EAGAIN && waits++ < 100) {
        this.sendWaits++;
        libc().poll(this.#pollOut(), 1n, 1);
        continue;
      }
      // An error the kernel gives for this one datagram (or a buffer that stays full): skip it.
      this.sendFailures++;
      k++;
    }
  }

  #pfd: Uint8Array | undefined;
  #pollOut(): Uint8Array {
    if (!this.#pfd) {
      this.#pfd = new Uint8Array(8);
      const v = new DataView(this.#pfd.buffer);
      v.setInt32(0, this.sock.fd, true);
      v.setInt16(4, 4, /* POLLOUT */ true);
    }
    return this.#pfd;
  }

  /** Hands every reply waiting now to `handle` (a view, valid during the call); never blocks. */
  drain(handle: (data: Uint8Array) => void): void {
    while (this.sock.recvEach(handle) === this.sock.batch) {
      // a full batch: more may be waiting
    }
  }

  close(): void {
    this.sock.close();
  }
}
