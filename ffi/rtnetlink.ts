// Interface configuration over a NETLINK_ROUTE socket (what `ip link` / `ip addr` do), so the
// daemon needs no external tools. Every request asks for an acknowledgement and every reply is
// bounds-checked before use; kernel refusals become NetlinkError, carrying the kernel's errno
// and, when it gives one, its explanation (extended ACK).

import {
  check,
  EAGAIN,
  EINTR,
  ENODEV,
  errno,
  ETIMEDOUT,
  libc,
  SysError,
  waitReadable,
} from "./libc.ts";

const AF_NETLINK = 16;
const AF_INET = 2;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const SOL_NETLINK = 270;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const MSG_DONTWAIT = 0x40;

const NLMSG_HDRLEN = 16;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_REPLACE = 0x100;
const NLM_F_CREATE = 0x400;
/** Set on an error message whose echoed request was cut to its header. */
const NLM_F_CAPPED = 0x100;
/** Set on an error message followed by extended-ACK attributes. */
const NLM_F_ACK_TLVS = 0x200;
const NLMSGERR_ATTR_MSG = 1;

const RTM_NEWLINK = 16;
const RTM_DELLINK = 17;
const RTM_GETLINK = 18;
const RTM_NEWADDR = 20;
const IFINFOMSG_LEN = 16;
const IFADDRMSG_LEN = 8;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_AF_SPEC = 26;
const AF_INET6 = 10;
const IFLA_INET6_ADDR_GEN_MODE = 8;
const IN6_ADDR_GEN_MODE_NONE = 1;

/**
 * IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE = NONE } }: no IPv6 link-local address,
 * so the kernel sends no router solicitations or MLD reports into an IPv4-only tunnel.
 */
function noIpv6AddressSpec(): Uint8Array {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint16(0, 12, true); // AF_INET6 attribute: header + the nested one
  v.setUint16(2, AF_INET6, true);
  v.setUint16(4, 5, true); // nested attribute: header + one byte
  v.setUint16(6, IFLA_INET6_ADDR_GEN_MODE, true);
  b[8] = IN6_ADDR_GEN_MODE_NONE;
  return b;
}
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFF_UP = 0x1;
const IFNAMSIZ = 16;

const REPLY_TIMEOUT_MS = 5000;
const RECV_BUFFER = 65536;

/** A request the kernel refused: errno plus the kernel's own message if it sent one. */
export class NetlinkError extends SysError {
  constructor(call: string, code: number, readonly kernelMessage: string | null) {
    super(call, code);
    this.name = "NetlinkError";
    if (kernelMessage) this.message += ` (kernel: ${kernelMessage})`;
  }
}

export interface LinkInfo {
  index: number;
  name: string;
  mtu: number;
  /** IFF_* flags (IFF_UP = 1, IFF_RUNNING = 0x40, ...). */
  flags: number;
  up: boolean;
}

export interface InterfaceConfig {
  /** IPv4 address as a 32-bit number (198.18.0.1 is 0xc6120001). */
  address: number;
  /** Prefix length, 0..32. */
  prefix: number;
  mtu?: number;
  /** Bring the link up (default true). */
  up?: boolean;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function addressBytes(address: number): Uint8Array {
  if (!Number.isInteger(address) || address < 0 || address > 0xffffffff) {
    throw new RangeError(`${address} is not an IPv4 address`);
  }
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, address, false);
  return out;
}

function encodeIfName(name: string): Uint8Array {
  const bytes = new TextEncoder().encode(name);
  if (bytes.length === 0 || bytes.length >= IFNAMSIZ || bytes.includes(0)) {
    throw new RangeError(`interface name "${name}" must be 1..${IFNAMSIZ - 1} bytes`);
  }
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Builds one netlink message: header, fixed family header, then attributes. */
function buildMessage(
  type: number,
  flags: number,
  seq: number,
  fixed: Uint8Array,
  attrs: Array<[number, Uint8Array]>,
): Uint8Array<ArrayBuffer> {
  let len = NLMSG_HDRLEN + align4(fixed.length);
  for (const [, value] of attrs) len += align4(4 + value.length);
  const msg = new Uint8Array(len);
  const dv = new DataView(msg.buffer);
  dv.setUint32(0, len, true);
  dv.setUint16(4, type, true);
  dv.setUint16(6, flags, true);
  dv.setUint32(8, seq, true);
  dv.setUint32(12, 0, true);
  msg.set(fixed, NLMSG_HDRLEN);
  let off = NLMSG_HDRLEN + align4(fixed.length);
  for (const [attrType, value] of attrs) {
    dv.setUint16(off, 4 + value.length, true);
    dv.setUint16(off + 2, attrType, true);
    msg.set(value, off + 4);
    off += align4(4 + value.length);
  }
  return msg;
}

function ifinfomsg(index: number, flags = 0, change = 0): Uint8Array {
  const b = new Uint8Array(IFINFOMSG_LEN);
  const dv = new DataView(b.buffer);
  dv.setInt32(4, index, true);
  dv.setUint32(8, flags, true);
  dv.setUint32(12, change, true);
  return b;
}

function u32(value: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, value, true);
  return b;
}

/** Walks rtattrs in [start, end) of `view`, stopping at the first malformed one. */
function* attributes(view: DataView, start: number, end: number) {
  let off = start;
  while (off + 4 <= end) {
    const len = view.getUint16(off, true);
    if (len < 4 || off + len > end) return;
    yield { type: view.getUint16(off + 2, true) & 0x3fff, offset: off + 4, length: len - 4 };
    off += align4(len);
  }
}

function cString(view: DataView, offset: number, length: number): string {
  const bytes = new Uint8Array(view.buffer, view.byteOffset + offset, length);
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** One NETLINK_ROUTE socket; requests are sent one at a time and their replies collected. */
export class RtNetlink {
  #fd: number;
  #seq = Math.floor(Date.now() / 1000) & 0xffffff;
  #buf = new Uint8Array(RECV_BUFFER);

  constructor() {
    this.#fd = check(
      "socket(AF_NETLINK)",
      libc().socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE),
    );
    const one = u32(1);
    // Both are best effort: older kernels just give fewer details in errors.
    libc().setsockopt(this.#fd, SOL_NETLINK, NETLINK_EXT_ACK, one, 4);
    libc().setsockopt(this.#fd, SOL_NETLINK, NETLINK_CAP_ACK, one, 4);
  }

  close(): void {
    if (this.#fd >= 0) libc().close(this.#fd);
    this.#fd = -1;
  }

  /**
   * Sends one request with NLM_F_ACK and returns the data messages that came before the ACK
   * (as views of their payload after the netlink header). Throws NetlinkError on refusal.
   */
  async request(
    call: string,
    type: number,
    flags: number,
    fixed: Uint8Array,
    attrs: Array<[number, Uint8Array]> = [],
  ): Promise<DataView[]> {
    if (this.#fd < 0) throw new Error("netlink socket is closed");
    const seq = ++this.#seq;
    const msg = buildMessage(type, flags | NLM_F_REQUEST | NLM_F_ACK, seq, fixed, attrs);
    for (;;) {
      const sent = Number(libc().send(this.#fd, msg, BigInt(msg.length), 0));
      if (sent === msg.length) break;
      if (sent < 0 && errno() === EINTR) continue;
      throw new SysError(`${call}: send`, sent < 0 ? errno() : EAGAIN);
    }
    const replies: DataView[] = [];
    const deadline = Date.now() + REPLY_TIMEOUT_MS;
    for (;;) {
      const n = Number(
        libc().recv(this.#fd, this.#buf, BigInt(this.#buf.length), MSG_DONTWAIT),
      );
      if (n < 0) {
        const code = errno();
        if (code === EINTR) continue;
        if (code !== EAGAIN) throw new SysError(`${call}: recv`, code);
        const left = deadline - Date.now();
        if (left <= 0 || !(await waitReadable(this.#fd, left))) {
          throw new SysError(`${call}: waiting for the kernel's answer`, ETIMEDOUT);
        }
        continue;
      }
      if (this.#parse(call, seq, n, replies)) return replies;
    }
  }

  /** Parses one datagram of replies; true once the ACK for `seq` was seen. */
  #parse(call: string, seq: number, n: number, replies: DataView[]): boolean {
    const view = new DataView(this.#buf.buffer, 0, n);
    let off = 0;
    while (off + NLMSG_HDRLEN <= n) {
      const len = view.getUint32(off, true);
      if (len < NLMSG_HDRLEN || off + len > n) {
        throw new Error(`${call}: malformed netlink reply (length ${len} at ${off} of ${n})`);
      }
      const type = view.getUint16(off + 4, true);
      const flags = view.getUint16(off + 6, true);
      const msgSeq = view.getUint32(off + 8, true);
      if (msgSeq === seq) {
        if (type === NLMSG_ERROR) {
          if (len < NLMSG_HDRLEN + 4) throw new Error(`${call}: truncated netlink error`);
          const error = view.getInt32(off + NLMSG_HDRLEN, true);
          if (error === 0) return true;
          throw new NetlinkError(call, -error, extackMessage(view, off, len, flags));
        }
        if (type === NLMSG_DONE) return true;
        // Copy: the receive buffer is reused by the next recv.
        const payload = this.#buf.slice(off + NLMSG_HDRLEN, off + len);
        replies.push(new DataView(payload.buffer));
      }
      off += align4(len);
    }
    return false;
  }
}

/** The kernel's NLMSGERR_ATTR_MSG text from an error message at `off`, if present. */
function extackMessage(view: DataView, off: number, len: number, flags: number): string | null {
  if (!(flags & NLM_F_ACK_TLVS)) return null;
  // After the errno comes the offending request: its header only when capped, else all of it.
  const echoed = off + NLMSG_HDRLEN + 4;
  if (echoed + NLMSG_HDRLEN > off + len) return null;
  const echoedLen = flags & NLM_F_CAPPED ? NLMSG_HDRLEN : view.getUint32(echoed, true);
  const tlvStart = echoed + align4(echoedLen);
  for (const a of attributes(view, tlvStart, off + len)) {
    if (a.type === NLMSGERR_ATTR_MSG) return cString(view, a.offset, a.length);
  }
  return null;
}

async function withSocket<T>(fn: (nl: RtNetlink) => Promise<T>): Promise<T> {
  const nl = new RtNetlink();
  try {
    return await fn(nl);
  } finally {
    nl.close();
  }
}

async function queryLink(nl: RtNetlink, name: string): Promise<LinkInfo> {
  const replies = await nl.request(
    `RTM_GETLINK "${name}"`,
    RTM_GETLINK,
    0,
    ifinfomsg(0),
    [[IFLA_IFNAME, encodeIfName(name)]],
  );
  const reply = replies[0];
  if (!reply || reply.byteLength < IFINFOMSG_LEN) {
    throw new Error(`RTM_GETLINK "${name}": no link description in the reply`);
  }
  const info: LinkInfo = {
    index: reply.getInt32(4, true),
    flags: reply.getUint32(8, true),
    name,
    mtu: 0,
    up: false,
  };
  info.up = (info.flags & IFF_UP) !== 0;
  for (const a of attributes(reply, IFINFOMSG_LEN, reply.byteLength)) {
    if (a.type === IFLA_IFNAME) info.name = cString(reply, a.offset, a.length);
    else if (a.type === IFLA_MTU && a.length >= 4) info.mtu = reply.getUint32(a.offset, true);
  }
  return info;
}

/** Describes a link; throws NetlinkError (ENODEV) when there is none by that name. */
export function getLink(name: string): Promise<LinkInfo> {
  return withSocket((nl) => queryLink(nl, name));
}

/** Interface index of `name` (throws NetlinkError ENODEV if absent). */
export async function linkIndex(name: string): Promise<number> {
  return (await getLink(name)).index;
}

export async function linkExists(name: string): Promise<boolean> {
  try {
    await getLink(name);
    return true;
  } catch (e) {
    if (e instanceof SysError && e.code === ENODEV) return false;
    throw e;
  }
}

async function changeLink(
  nl: RtNetlink,
  name: string,
  index: number,
  change: { up?: boolean; mtu?: number; ipv6Addresses?: false },
): Promise<void> {
  const attrs: Array<[number, Uint8Array]> = [];
  const what: string[] = [];
  if (change.ipv6Addresses === false) {
    attrs.push([IFLA_AF_SPEC, noIpv6AddressSpec()]);
    what.push("no IPv6 addresses");
  }
  if (change.mtu !== undefined) {
    if (!Number.isInteger(change.mtu) || change.mtu <= 0 || change.mtu > 0xffffffff) {
      throw new RangeError(`MTU ${change.mtu} is not a positive integer`);
    }
    attrs.push([IFLA_MTU, u32(change.mtu)]);
    what.push(`mtu ${change.mtu}`);
  }
  if (change.up !== undefined) what.push(change.up ? "up" : "down");
  // ifi_change masks which flags the kernel applies: IFF_UP only when asked to change it.
  const upMask = change.up === undefined ? 0 : IFF_UP;
  await nl.request(
    `RTM_NEWLINK "${name}" ${what.join(" ")}`,
    RTM_NEWLINK,
    0,
    ifinfomsg(index, change.up ? IFF_UP : 0, upMask),
    attrs,
  );
}

/** Brings a link up or down and/or sets its MTU; options left out stay as they are. */
export function setLink(name: string, change: { up?: boolean; mtu?: number }): Promise<void> {
  return withSocket(async (nl) => {
    const { index } = await queryLink(nl, name);
    await changeLink(nl, name, index, change);
  });
}

async function putAddress(
  nl: RtNetlink,
  name: string,
  index: number,
  address: number,
  prefix: number,
) {
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) {
    throw new RangeError(`prefix length ${prefix} is not in 0..32`);
  }
  const addr = addressBytes(address);
  const fixed = new Uint8Array(IFADDRMSG_LEN);
  const dv = new DataView(fixed.buffer);
  fixed[0] = AF_INET;
  fixed[1] = prefix;
  dv.setUint32(4, index, true);
  // IFA_ADDRESS equal to IFA_LOCAL: an ordinary (not peer-to-peer) address and subnet route.
  // REPLACE makes configuring twice harmless.
  await nl.request(
    `RTM_NEWADDR ${addr.join(".")}/${prefix} on "${name}"`,
    RTM_NEWADDR,
    NLM_F_CREATE | NLM_F_REPLACE,
    fixed,
    [[IFA_LOCAL, addr], [IFA_ADDRESS, addr]],
  );
}

/** Adds (or re-adds) an IPv4 address with its prefix to a link. */
export function addAddress(name: string, address: number, prefix: number): Promise<void> {
  return withSocket(async (nl) => {
    const { index } = await queryLink(nl, name);
    await putAddress(nl, name, index, address, prefix);
  });
}

/**
 * Sets the MTU, adds the address and brings the link up (in that order, so the subnet route
 * appears with the final MTU). Returns the link's description afterwards.
 */
export function configureInterface(name: string, config: InterfaceConfig): Promise<LinkInfo> {
  return withSocket(async (nl) => {
    const { index } = await queryLink(nl, name);
    if (config.mtu !== undefined) await changeLink(nl, name, index, { mtu: config.mtu });
    // Best effort: a kernel without IPv6 has nothing to turn off.
    await changeLink(nl, name, index, { ipv6Addresses: false }).catch(() => {});
    await putAddress(nl, name, index, config.address, config.prefix);
    if (config.up ?? true) await changeLink(nl, name, index, { up: true });
    return await queryLink(nl, name);
  });
}

/**
 * Deletes a link by name (veth, dummy, TUN...). A TUN device also goes away by itself when its
 * last descriptor closes; deleting it first leaves that descriptor useless.
 */
export function deleteLink(name: string): Promise<void> {
  return withSocket(async (nl) => {
    await nl.request(`RTM_DELLINK "${name}"`, RTM_DELLINK, 0, ifinfomsg(0), [
      [IFLA_IFNAME, encodeIfName(name)],
    ]);
  });
}
