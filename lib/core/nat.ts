// All rewriting of addresses inside IPv4 packets, in place. Two ways, each for its case:
//
// - translate(): packets leaving a tunnel. The peer may send inner packets whose checksums do
//   not match their addresses (the reference blanks the destination without fixing them), so
//   unfragmented TCP/UDP checksums are recomputed from scratch, not adjusted.
//   translateOffloaded() leaves a TCP checksum to a TUN device that finishes checksums.
// - rewriteAddresses(): an incremental update (RFC 1624) that keeps valid checksums valid. A
//   fragment cannot be recomputed (its L4 checksum covers the whole datagram), so translate()
//   uses it for fragments.

import {
  checksumAdjust32,
  ipv4FragmentOffset,
  ipv4HeaderLength,
  ipv4IsFragment,
  PROTO_DCCP,
  PROTO_TCP,
  PROTO_UDP,
  PROTO_UDPLITE,
  pseudoHeaderSum,
  setIpv4HeaderChecksum,
  setTransportChecksum,
} from "./ip.ts";
import { readU16be, readU32be, writeU16be, writeU32be } from "./bytes.ts";

/**
 * Sets source and destination of the IPv4 packet `p` in place and makes its checksums right.
 * Returns false (packet untouched) when it is not a well-formed IPv4 packet.
 */
export function translate(p: Uint8Array, src: number, dst: number): boolean {
  return translateTo(p, src, dst, false) !== null;
}

/** How translateOffloaded() left the packet's transport checksum. */
export type Checksummed = "complete" | "partial";

/**
 * translate() for a TUN device that finishes checksums (a virtio_net_hdr with NEEDS_CSUM): an
 * unfragmented TCP packet gets only its pseudo-header sum in the checksum field ("partial"), the
 * kernel sums the segment from the TCP header on (or, delivering locally, takes it as it is:
 * the tunnel authenticated every byte). That saves a pass over the payload per packet. Other
 * packets are translated as by translate() ("complete"). null when it is not IPv4.
 */
export function translateOffloaded(p: Uint8Array, src: number, dst: number): Checksummed | null {
  return translateTo(p, src, dst, true);
}

function translateTo(p: Uint8Array, src: number, dst: number, partial: boolean) {
  const hl = ipv4HeaderLength(p);
  if (hl === 0) return null;
  if (ipv4IsFragment(p)) return rewriteAddresses(p, src, dst) ? "complete" : null;
  const total = readU16be(p, 2);
  const protocol = p[9];
  const at = protocol === PROTO_TCP ? hl + 16 : protocol === PROTO_UDP ? hl + 6 : -1;
  if (at >= 0 && at + 2 > total) return null; // checked before anything is written
  src >>>= 0;
  dst >>>= 0;
  writeAddresses(p, src, dst);
  setIpv4HeaderChecksum(p);
  if (at < 0) return "complete";
  if (partial && protocol === PROTO_TCP) {
    writeU16be(p, at, pseudoHeaderSum(src, dst, PROTO_TCP, total - hl));
    return "partial";
  }
  setTransportChecksum(p, hl, total, protocol);
  return "complete";
}

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
  const oldSrc = readU32be(p, 12);
  const oldDst = readU32be(p, 16);

  const csOff = ipv4FragmentOffset(p) === 0 ? l4ChecksumOffset(p[9]) : -1;
  if (csOff >= 0) {
    const at = hl + csOff;
    if (at + 2 > readU16be(p, 2)) return false;
    const old = readU16be(p, at);
    if (!(old === 0 && p[9] === PROTO_UDP)) {
      let c = checksumAdjust32(old, oldSrc, newSrc);
      c = checksumAdjust32(c, oldDst, newDst);
      // In ones' complement 0 and 0xffff are both zero; UDP reserves 0 for "no checksum".
      if (c === 0 && p[9] === PROTO_UDP) c = 0xffff;
      writeU16be(p, at, c);
    }
  }

  const ipc = checksumAdjust32(readU16be(p, 10), oldSrc, newSrc);
  writeU16be(p, 10, checksumAdjust32(ipc, oldDst, newDst));
  writeAddresses(p, newSrc, newDst);
  return true;
}

function writeAddresses(p: Uint8Array, src: number, dst: number): void {
  writeU32be(p, 12, src);
  writeU32be(p, 16, dst);
}
