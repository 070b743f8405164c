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
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const IFNAMSIZ = 16;
/** sizeof(struct ifreq) on Linux: the name plus a 24-byte union. */
const IFREQ_SIZE = 40;

export interface TunHandle {
  fd: number;
  /** The interface name the kernel chose (patterns such as "pqc%d" are expanded). */
  name: string;
}

function ifreqName(ifr: Uint8Array): string {
  const end = ifr.subarray(0, IFNAMSIZ).indexOf(0);
  return new TextDecoder().decode(ifr.subarray(0, end < 0 ? IFNAMSIZ : end));
}

/**
 * Creates a TUN interface (no packet-information header) and returns its descriptor, which is
 * non-blocking and close-on-exec. `pattern` may contain "%d" for the kernel to number it.
 */
export function openTun(pattern = "pqc%d"): TunHandle {
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
  new DataView(ifr.buffer).setUint16(IFNAMSIZ, IFF_TUN | IFF_NO_PI, true);
  if (libc().ioctl(fd, TUNSETIFF, ifr) < 0) {
    const code = errno();
    libc().close(fd);
    throw new SysError(`ioctl(TUNSETIFF, "${pattern}")`, code);
  }
  return { fd, name: ifreqName(ifr) };
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

  private constructor(fd: number, readonly name: string) {
    this.#fd = fd;
  }

  /** Creates a new interface; see openTun. */
  static open(pattern = "pqc%d"): TunDevice {
    const { fd, name } = openTun(pattern);
    return new TunDevice(fd, name);
  }

  /**
   * Adopts a descriptor opened elsewhere, e.g. handed down by a privileged parent. The
   * descriptor is made non-blocking (a flag shared with every copy of it).
   */
  static fromFd(fd: number): TunDevice {
    const name = tunName(fd);
    setNonBlocking(fd);
    return new TunDevice(fd, name);
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
   * A buffer shorter than a packet gets it truncated, so size them for the MTU.
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

  /** Writes one IP packet; false (and counted) if the kernel refused it. */
  write(packet: Uint8Array): boolean {
    if (this.#fd < 0) return false;
    for (;;) {
      const n = Number(libc().write(this.#fd, packet, BigInt(packet.length)));
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
