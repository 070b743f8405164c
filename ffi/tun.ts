// TUN devices: layer-3 packets in and out of the kernel through /dev/net/tun.
//
// Devices are non-persistent: the interface exists while a descriptor is open and the kernel
// removes it when the last one closes, so a crashed process leaves nothing behind.

import {
  check,
  cstr,
  EAGAIN,
  EINTR,
  errno,
  libc,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  setNonBlocking,
  SysError,
  waitReadable,
} from "./libc.ts";

const TUNSETIFF = 0x400454can;
const TUNGETIFF = 0x800454d2n;
const TUNSETOFFLOAD = 0x400454d0n;
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO_ECN = 0x08;
const TUN_F_USO4 = 0x20;
const TUN_F_USO6 = 0x40;
/** Every read and write of a device with offloads starts with a struct virtio_net_hdr. */
export const VNET_HDR_BYTES = 10;
/** virtio_net_hdr flag: the checksum at csum_start + csum_offset is to be finished. */
const VNET_F_NEEDS_CSUM = 1;
/** Where the checksum lies in a TCP header. */
const TCP_CSUM_OFFSET = 16;
const IFNAMSIZ = 16;
/** sizeof(struct ifreq) on Linux: the name plus a 24-byte union. */
const IFREQ_SIZE = 40;

export interface TunHandle {
  fd: number;
  /** The interface name the kernel chose (patterns such as "pqc%d" are expanded). */
  name: string;
  /** TUN_F_* offloads granted (0 without IFF_VNET_HDR). */
  offloads: number;
}

export interface TunOptions {
  /**
   * IFF_VNET_HDR with checksum and TCP (and, where the kernel has it, UDP) segmentation
   * offloads: reads and writes carry a virtio_net_hdr and may be up to 64 kB segments.
   */
  offload?: boolean;
}

/** Asks for the offloads we can split, the largest set the kernel accepts. */
function setOffloads(fd: number): number {
  const base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN;
  // USO needs both families at once (Linux 6.2 and later).
  for (const want of [base | TUN_F_USO4 | TUN_F_USO6, base, TUN_F_CSUM, 0]) {
    if (libc().ioctlValue(fd, TUNSETOFFLOAD, BigInt(want)) === 0) return want;
  }
  return 0;
}

function ifreqName(ifr: Uint8Array): string {
  const end = ifr.subarray(0, IFNAMSIZ).indexOf(0);
  return new TextDecoder().decode(ifr.subarray(0, end < 0 ? IFNAMSIZ : end));
}

/**
 * Creates a TUN interface (no packet-information header) and returns its descriptor, which is
 * non-blocking and close-on-exec. `pattern` may contain "%d" for the kernel to number it.
 */
export function openTun(pattern = "pqc%d", opts: TunOptions = {}): TunHandle {
  const encoded = new TextEncoder().encode(pattern);
  if (encoded.length === 0 || encoded.length >= IFNAMSIZ || encoded.includes(0)) {
    throw new RangeError(`TUN name "${pattern}" must be 1..${IFNAMSIZ - 1} bytes without NUL`);
  }
  const fd = check(
    "open(/dev/net/tun)",
    libc().open(cstr("/dev/net/tun"), O_RDWR | O_NONBLOCK | O_CLOEXEC, 0),
  );
  const ifr = new Uint8Array(IFREQ_SIZE);
  ifr.set(encoded);
  const flags = IFF_TUN | IFF_NO_PI | (opts.offload ? IFF_VNET_HDR : 0);
  new DataView(ifr.buffer).setUint16(IFNAMSIZ, flags, true);
  if (libc().ioctl(fd, TUNSETIFF, ifr) < 0) {
    const code = errno();
    libc().close(fd);
    throw new SysError(`ioctl(TUNSETIFF, "${pattern}")`, code);
  }
  return { fd, name: ifreqName(ifr), offloads: opts.offload ? setOffloads(fd) : 0 };
}

/** Whether a TUN descriptor was opened with IFF_VNET_HDR. */
function hasVnetHeader(fd: number): boolean {
  const ifr = new Uint8Array(IFREQ_SIZE);
  check("ioctl(TUNGETIFF)", libc().ioctl(fd, TUNGETIFF, ifr));
  return (new DataView(ifr.buffer).getUint16(IFNAMSIZ, true) & IFF_VNET_HDR) !== 0;
}

/** Name of the interface a TUN descriptor is attached to. */
export function tunName(fd: number): string {
  const ifr = new Uint8Array(IFREQ_SIZE);
  check("ioctl(TUNGETIFF)", libc().ioctl(fd, TUNGETIFF, ifr));
  return ifreqName(ifr);
}

export interface TunStats {
  packetsRead: number;
  packetsWritten: number;
  /** Reads that failed with something other than EAGAIN. */
  readErrors: number;
  /** Writes refused by the kernel (queue full, malformed packet, interface down...). */
  writeErrors: number;
  /** errno of the most recent failed read or write, 0 if none. */
  lastErrno: number;
}

/** A TUN interface's descriptor. Per-packet methods never throw. */
export class TunDevice {
  readonly stats: TunStats = {
    packetsRead: 0,
    packetsWritten: 0,
    readErrors: 0,
    writeErrors: 0,
    lastErrno: 0,
  };
  #fd: number;
  /** Where write() puts the empty virtio_net_hdr in front of a packet. */
  #frame: Uint8Array | null;

  private constructor(fd: number, readonly name: string, readonly vnetHeader: boolean) {
    this.#fd = fd;
    this.#frame = vnetHeader ? new Uint8Array(VNET_HDR_BYTES + 65535) : null;
  }

  /** Creates a new interface; see openTun. */
  static open(pattern = "pqc%d", opts: TunOptions = {}): TunDevice {
    const { fd, name } = openTun(pattern, opts);
    return new TunDevice(fd, name, opts.offload === true);
  }

  /**
   * Adopts a descriptor opened elsewhere, e.g. handed down by a privileged parent. The
   * descriptor is made non-blocking (a flag shared with every copy of it).
   */
  static fromFd(fd: number): TunDevice {
    const name = tunName(fd);
    setNonBlocking(fd);
    return new TunDevice(fd, name, hasVnetHeader(fd));
  }

  get fd(): number {
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /**
   * Reads queued packets into `bufs[0..]`, one packet per buffer, until the queue is empty or
   * the buffers run out; `lens[i]` receives each length. Returns the number of packets read.
   * A buffer shorter than a packet gets it truncated, so size them for the MTU (for 64 kB plus
   * the header with offloads). With `vnetHeader` each buffer starts with a virtio_net_hdr.
   */
  readBatch(bufs: Uint8Array[], lens: number[]): number {
    const fd = this.#fd;
    if (fd < 0) return 0;
    const read = libc().read;
    let count = 0;
    while (count < bufs.length) {
      const buf = bufs[count];
      const n = Number(read(fd, buf, BigInt(buf.length)));
      if (n < 0) {
        const code = errno();
        if (code === EINTR) continue;
        if (code !== EAGAIN) {
          this.stats.readErrors++;
          this.stats.lastErrno = code;
        }
        break;
      }
      lens[count++] = n;
    }
    this.stats.packetsRead += count;
    return count;
  }

  /**
   * Writes one IP packet; false (and counted) if the kernel refused it. `partialTcpChecksum`
   * (only with `vnetHeader`): the packet is TCP and its checksum field holds the pseudo-header
   * sum; the kernel finishes it.
   */
  write(packet: Uint8Array, partialTcpChecksum = false): boolean {
    const f = this.#frame;
    if (f === null) return this.writeFrame(packet);
    if (packet.length > f.length - VNET_HDR_BYTES || packet.length < 1) {
      this.stats.writeErrors++;
      return false;
    }
    f.fill(0, 0, VNET_HDR_BYTES); // no offload: the packet's checksums are complete
    if (partialTcpChecksum) {
      const start = (packet[0] & 0x0f) * 4;
      f[0] = VNET_F_NEEDS_CSUM;
      f[6] = start; // csum_start (little-endian u16): the TCP header
      f[8] = TCP_CSUM_OFFSET; // csum_offset
    }
    f.set(packet, VNET_HDR_BYTES);
    return this.writeFrame(f.subarray(0, VNET_HDR_BYTES + packet.length));
  }

  /**
   * Writes one frame as it is: with `vnetHeader`, a virtio_net_hdr and then the packet (which
   * may be a large segment the header describes); without, a plain IP packet.
   */
  writeFrame(frame: Uint8Array): boolean {
    if (this.#fd < 0) return false;
    for (;;) {
      const n = Number(libc().write(this.#fd, frame, BigInt(frame.length)));
      if (n >= 0) {
        this.stats.packetsWritten++;
        return true;
      }
      const code = errno();
      if (code === EINTR) continue;
      this.stats.writeErrors++;
      this.stats.lastErrno = code;
      return false;
    }
  }

  /** Resolves true once a packet is waiting, false on timeout (or after close). */
  waitReadable(timeoutMs: number): Promise<boolean> {
    if (this.#fd < 0) return Promise.resolve(false);
    return waitReadable(this.#fd, timeoutMs);
  }

  /** Closes the descriptor; the interface goes away with the last open copy of it. */
  close(): void {
    if (this.#fd < 0) return;
    libc().close(this.#fd);
    this.#fd = -1;
  }
}
