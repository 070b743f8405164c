// IPv4 helpers shared by client and server: header parsing, the internet checksum, address text
// and subnets. Rewriting addresses in packets is nat.ts's job. Pure functions over Uint8Array;
// nothing here allocates per packet except `parseIpv4Header`, which returns a summary object
// for callers that want one.

import { readU16be, readU32be, writeU16be } from "./bytes.ts";

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_DCCP = 33;
export const PROTO_UDPLITE = 136;

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
  const total = readU16be(p, 2);
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
export function parseIpv4Header(p: Uint8Array): Ipv4Header | null {
  const hl = ipv4HeaderLength(p);
  if (hl === 0) return null;
  const frag = readU16be(p, 6);
  return {
    headerLength: hl,
    totalLength: readU16be(p, 2),
    id: readU16be(p, 4),
    dontFragment: (frag & 0x4000) !== 0,
    moreFragments: (frag & 0x2000) !== 0,
    fragmentOffset: (frag & 0x1fff) * 8,
    ttl: p[8],
    protocol: p[9],
    checksum: readU16be(p, 10),
    src: readU32be(p, 12),
    dst: readU32be(p, 16),
  };
}

export function ipv4Dst(p: Uint8Array): number {
  return readU32be(p, 16);
}

/** Fragment offset in bytes (0 for an unfragmented packet or a first fragment). */
export function ipv4FragmentOffset(p: Uint8Array): number {
  return (readU16be(p, 6) & 0x1fff) * 8;
}

/** True when the packet is any fragment (first, middle or last) of a larger datagram. */
export function ipv4IsFragment(p: Uint8Array): boolean {
  return (readU16be(p, 6) & 0x3fff) !== 0;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Ones' complement sum of `p[start:end]` as big-endian 16-bit words (an odd trailing byte is
 * padded with zero), added to `initial`, folded to 16 bits. Not complemented.
 */
export function onesComplementSum(p: Uint8Array, start = 0, end = p.length, initial = 0): number {
  // 32-bit words: 2^16 is 1 in ones' complement arithmetic, so the sum of the words folds to the
  // sum of their 16-bit halves, with half the loads. A double holds the sum exactly far beyond
  // any packet size; fold once at the end. Where the data lies at an even address, the aligned
  // middle is read as native (little-endian) words, faster than DataView's big-endian reads: a
  // ones' complement sum of byte-swapped words is the byte-swapped sum (RFC 1071, 2.B).
  let sum = initial;
  let i = start;
  const at = p.byteOffset + i;
  if (end - i >= 64 && (at & 1) === 0 && LITTLE_ENDIAN) {
    if ((at & 2) !== 0) {
      sum += (p[i] << 8) | p[i + 1];
      i += 2;
    }
    const words = (end - i) >> 2;
    const u32 = new Uint32Array(p.buffer, p.byteOffset + i, words);
    let le = 0;
    for (let k = 0; k < words; k++) le += u32[k];
    i += words * 4;
    while (le > 0xffff) le = (le % 0x10000) + Math.floor(le / 0x10000);
    sum += ((le & 0xff) << 8) | (le >>> 8);
  } else if (end - i >= 64) {
    const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
    const end4 = i + ((end - i) & ~3);
    for (; i < end4; i += 4) sum += dv.getUint32(i);
  } else {
    // Headers: bytes as they are, no view to allocate.
    for (; i + 2 <= end; i += 2) sum += (p[i] << 8) | p[i + 1];
  }
  if (i + 2 <= end) {
    sum += (p[i] << 8) | p[i + 1];
    i += 2;
  }
  if (i < end) sum += p[i] << 8;
  while (sum > 0xffff) sum = (sum % 0x10000) + Math.floor(sum / 0x10000);
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
  writeU16be(p, 10, 0);
  writeU16be(p, 10, internetChecksum(p, 0, hl));
}

/**
 * Recomputes the TCP or UDP checksum of the segment p[hl:end] in place, over the pseudo-header
 * of the packet's own addresses. A UDP result of 0 is sent as 0xffff (0 means "no checksum").
 */
export function setTransportChecksum(p: Uint8Array, hl: number, end: number, protocol: number) {
  const at = hl + (protocol === PROTO_TCP ? 16 : 6);
  writeU16be(p, at, 0);
  const pseudo = pseudoHeaderSum(readU32be(p, 12), readU32be(p, 16), protocol, end - hl);
  const c = internetChecksum(p, hl, end, pseudo);
  writeU16be(p, at, c === 0 && protocol === PROTO_UDP ? 0xffff : c);
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
    throw new RangeError(`index ${index} outside ${numberToIpv4(s.network)}/${s.prefix}`);
  }
  return (s.network + index) >>> 0;
}

/** Broadcast (all host bits set) address of the subnet. */
export function subnetBroadcast(s: Subnet): number {
  return (s.network | ~s.mask) >>> 0;
}
