// IPv4 packet helpers shared by client and server: header parsing, the internet checksum and
// in-place address rewriting. Pure functions over Uint8Array; nothing here allocates per packet
// except `parseIpv4`, which returns a summary object for callers that want one.

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_DCCP = 33;
export const PROTO_UDPLITE = 136;

/** Offset of the checksum inside the L4 header for protocols whose checksum covers the
 * IPv4 pseudo-header (source and destination address), or -1 for all others. */
function l4ChecksumOffset(protocol: number): number {
  switch (protocol) {
    case PROTO_TCP:
      return 16;
    case PROTO_UDP:
    case PROTO_DCCP:
    case PROTO_UDPLITE:
      return 6;
    default:
      return -1;
  }
}

/**
 * Validates the IPv4 header of `p` and returns its length in bytes, or 0 when the packet is
 * not a well-formed IPv4 packet: version 4, IHL >= 5, header inside the buffer, total length
 * at least the header and at most the buffer. Bytes past the total length (link padding) are
 * allowed. The header checksum is not verified (see `ipv4HeaderChecksumOk`).
 */
export function ipv4HeaderLength(p: Uint8Array): number {
  if (p.length < 20) return 0;
  const vihl = p[0];
  if (vihl >> 4 !== 4) return 0;
  const hl = (vihl & 0x0f) * 4;
  if (hl < 20 || hl > p.length) return 0;
  const total = (p[2] << 8) | p[3];
  if (total < hl || total > p.length) return 0;
  return hl;
}

/** Summary of a parsed IPv4 header. Addresses are unsigned 32-bit numbers. */
export interface Ipv4Header {
  headerLength: number;
  totalLength: number;
  id: number;
  dontFragment: boolean;
  moreFragments: boolean;
  /** Fragment offset in bytes. */
  fragmentOffset: number;
  ttl: number;
  protocol: number;
  checksum: number;
  src: number;
  dst: number;
}

/** Parses the IPv4 header with bounds checks; null on anything malformed. */
export function parseIpv4(p: Uint8Array): Ipv4Header | null {
  const hl = ipv4HeaderLength(p);
  if (hl === 0) return null;
  const frag = (p[6] << 8) | p[7];
  return {
    headerLength: hl,
    totalLength: (p[2] << 8) | p[3],
    id: (p[4] << 8) | p[5],
    dontFragment: (frag & 0x4000) !== 0,
    moreFragments: (frag & 0x2000) !== 0,
    fragmentOffset: (frag & 0x1fff) * 8,
    ttl: p[8],
    protocol: p[9],
    checksum: (p[10] << 8) | p[11],
    src: readU32(p, 12),
    dst: readU32(p, 16),
  };
}

export function ipv4Src(p: Uint8Array): number {
  return readU32(p, 12);
}

export function ipv4Dst(p: Uint8Array): number {
  return readU32(p, 16);
}

export function ipv4Protocol(p: Uint8Array): number {
  return p[9];
}

/** Fragment offset in bytes (0 for an unfragmented packet or a first fragment). */
export function ipv4FragmentOffset(p: Uint8Array): number {
  return (((p[6] << 8) | p[7]) & 0x1fff) * 8;
}

/** True when the packet is any fragment (first, middle or last) of a larger datagram. */
export function ipv4IsFragment(p: Uint8Array): boolean {
  return (((p[6] << 8) | p[7]) & 0x3fff) !== 0;
}

function readU32(p: Uint8Array, o: number): number {
  return ((p[o] << 24) | (p[o + 1] << 16) | (p[o + 2] << 8) | p[o + 3]) >>> 0;
}

function writeU32(p: Uint8Array, o: number, v: number): void {
  p[o] = v >>> 24;
  p[o + 1] = (v >>> 16) & 0xff;
  p[o + 2] = (v >>> 8) & 0xff;
  p[o + 3] = v & 0xff;
}

/**
 * Ones' complement sum of `p[start:end]` as big-endian 16-bit words (an odd trailing byte is
 * padded with zero), added to `initial`, folded to 16 bits. Not complemented.
 */
export function onesComplementSum(p: Uint8Array, start = 0, end = p.length, initial = 0): number {
  // Plain addition is exact in a double far beyond any packet size; fold once at the end.
  let sum = initial;
  const even = start + ((end - start) & ~1);
  for (let i = start; i < even; i += 2) sum += (p[i] << 8) | p[i + 1];
  if (even < end) sum += p[even] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** The internet checksum (RFC 1071) of `p[start:end]`: the complement of the folded sum. */
export function internetChecksum(p: Uint8Array, start = 0, end = p.length, initial = 0): number {
  return ~onesComplementSum(p, start, end, initial) & 0xffff;
}

/** Sum of the IPv4 pseudo-header (addresses, protocol, L4 length), folded to 16 bits. */
export function pseudoHeaderSum(src: number, dst: number, protocol: number, l4Length: number) {
  let sum = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + protocol + l4Length;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** Verifies the IPv4 header checksum of a packet whose header `ipv4HeaderLength` accepted. */
export function ipv4HeaderChecksumOk(p: Uint8Array): boolean {
  const hl = (p[0] & 0x0f) * 4;
  return onesComplementSum(p, 0, hl) === 0xffff;
}

/** Recomputes the IPv4 header checksum in place. */
export function setIpv4HeaderChecksum(p: Uint8Array): void {
  const hl = (p[0] & 0x0f) * 4;
  p[10] = 0;
  p[11] = 0;
  const c = internetChecksum(p, 0, hl);
  p[10] = c >> 8;
  p[11] = c & 0xff;
}

/**
 * RFC 1624 incremental update (eqn. 3, HC' = ~(~HC + ~m + m')) of a checksum when one 16-bit
 * word of the covered data changes from `oldWord` to `newWord`.
 */
export function checksumAdjust16(checksum: number, oldWord: number, newWord: number): number {
  let sum = (~checksum & 0xffff) + (~oldWord & 0xffff) + (newWord & 0xffff);
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** RFC 1624 update for a 32-bit value (an address) changing from `oldValue` to `newValue`. */
export function checksumAdjust32(checksum: number, oldValue: number, newValue: number): number {
  let sum = (~checksum & 0xffff) +
    (~(oldValue >>> 16) & 0xffff) + (~oldValue & 0xffff) +
    ((newValue >>> 16) & 0xffff) + (newValue & 0xffff);
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * Rewrites source and destination address of the IPv4 packet `p` in place, keeping the IP
 * header checksum and the TCP/UDP (also DCCP, UDP-Lite) checksum valid by incremental update.
 *
 * - A UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as 0xffff.
 * - ICMP (and any protocol without a pseudo-header) keeps its checksum: it does not cover the
 *   addresses.
 * - Only a first fragment (offset 0) carries the L4 header; later fragments get the IP header
 *   rewrite only. The L4 checksum covers the whole datagram, but an address change moves it by
 *   the same delta whatever the payload, so updating it in the first fragment is correct.
 *
 * Returns false, leaving `p` untouched, when the packet is malformed or the L4 checksum field
 * lies outside this packet (a truncated or tiny first fragment).
 */
export function rewriteAddresses(p: Uint8Array, newSrc: number, newDst: number): boolean {
  const hl = ipv4HeaderLength(p);
  if (hl === 0) return false;
  newSrc >>>= 0;
  newDst >>>= 0;
  const oldSrc = readU32(p, 12);
  const oldDst = readU32(p, 16);

  const csOff = ipv4FragmentOffset(p) === 0 ? l4ChecksumOffset(p[9]) : -1;
  if (csOff >= 0) {
    const at = hl + csOff;
    const total = (p[2] << 8) | p[3];
    if (at + 2 > total) return false;
    const old = (p[at] << 8) | p[at + 1];
    if (!(old === 0 && p[9] === PROTO_UDP)) {
      let c = checksumAdjust32(old, oldSrc, newSrc);
      c = checksumAdjust32(c, oldDst, newDst);
      // In ones' complement 0 and 0xffff are both zero; UDP reserves 0 for "no checksum".
      if (c === 0 && p[9] === PROTO_UDP) c = 0xffff;
      p[at] = c >> 8;
      p[at + 1] = c & 0xff;
    }
  }

  let ipc = (p[10] << 8) | p[11];
  ipc = checksumAdjust32(ipc, oldSrc, newSrc);
  ipc = checksumAdjust32(ipc, oldDst, newDst);
  p[10] = ipc >> 8;
  p[11] = ipc & 0xff;
  writeU32(p, 12, newSrc);
  writeU32(p, 16, newDst);
  return true;
}

/** Parses a dotted-quad IPv4 address strictly (four decimal octets 0..255, no leading
 * zeros beyond "0"); null when malformed. */
export function parseIpv4Address(s: string): number | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  let v = 0;
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return null;
    const n = Number(part);
    if (n > 255) return null;
    v = v * 256 + n;
  }
  return v;
}

/** Dotted quad to an unsigned 32-bit number; throws TypeError when malformed. */
export function ipv4ToNumber(s: string): number {
  const v = parseIpv4Address(s);
  if (v === null) throw new TypeError(`not an IPv4 address: ${JSON.stringify(s)}`);
  return v;
}

/** Unsigned 32-bit number to dotted quad. */
export function numberToIpv4(v: number): string {
  v >>>= 0;
  return `${v >>> 24}.${(v >>> 16) & 0xff}.${(v >>> 8) & 0xff}.${v & 0xff}`;
}

/** An IPv4 subnet: `network` has no host bits set. */
export interface Subnet {
  network: number;
  prefix: number;
  mask: number;
}

export function prefixMask(prefix: number): number {
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) {
    throw new RangeError(`bad prefix length ${prefix}`);
  }
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** Parses "a.b.c.d/n". Host bits in the address are cleared (10.43.0.1/16 is 10.43.0.0/16). */
export function parseSubnet(cidr: string): Subnet {
  const slash = cidr.indexOf("/");
  if (slash < 0) throw new TypeError(`not a CIDR subnet: ${JSON.stringify(cidr)}`);
  const prefixText = cidr.slice(slash + 1);
  if (!/^[0-9]{1,2}$/.test(prefixText)) {
    throw new TypeError(`not a CIDR subnet: ${JSON.stringify(cidr)}`);
  }
  const prefix = Number(prefixText);
  const mask = prefixMask(prefix);
  return { network: (ipv4ToNumber(cidr.slice(0, slash)) & mask) >>> 0, prefix, mask };
}

export function formatSubnet(s: Subnet): string {
  return `${numberToIpv4(s.network)}/${s.prefix}`;
}

export function inSubnet(address: number, s: Subnet): boolean {
  return ((address & s.mask) >>> 0) === s.network;
}

/** Number of addresses in the subnet (including network and broadcast). */
export function subnetSize(s: Subnet): number {
  return 2 ** (32 - s.prefix);
}

/** The address at `index` inside the subnet (0 is the network address); throws when outside. */
export function subnetAddress(s: Subnet, index: number): number {
  if (!Number.isInteger(index) || index < 0 || index >= subnetSize(s)) {
    throw new RangeError(`index ${index} outside ${formatSubnet(s)}`);
  }
  return (s.network + index) >>> 0;
}

/** Broadcast (all host bits set) address of the subnet. */
export function subnetBroadcast(s: Subnet): number {
  return (s.network | ~s.mask) >>> 0;
}
