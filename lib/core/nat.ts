// Address translation for packets leaving a tunnel. The peer may send inner packets whose
// checksums do not match their addresses (the reference blanks the destination without fixing
// them), so unfragmented TCP/UDP checksums are recomputed from scratch, not adjusted.

import {
  internetChecksum,
  ipv4HeaderLength,
  ipv4IsFragment,
  PROTO_TCP,
  PROTO_UDP,
  pseudoHeaderSum,
  rewriteAddresses,
} from "./ip.ts";

function writeU32(p: Uint8Array, o: number, v: number): void {
  p[o] = v >>> 24;
  p[o + 1] = (v >>> 16) & 0xff;
  p[o + 2] = (v >>> 8) & 0xff;
  p[o + 3] = v & 0xff;
}

/**
 * Sets source and destination of the IPv4 packet `p` in place and makes its checksums right.
 * Returns false (packet untouched) when it is not a well-formed IPv4 packet.
 */
export function translate(p: Uint8Array, src: number, dst: number): boolean {
  const hl = ipv4HeaderLength(p);
  if (hl === 0) return false;
  if (ipv4IsFragment(p)) return rewriteAddresses(p, src, dst);
  const total = (p[2] << 8) | p[3];
  const protocol = p[9];
  const at = protocol === PROTO_TCP ? hl + 16 : protocol === PROTO_UDP ? hl + 6 : -1;
  if (at >= 0 && at + 2 > total) return false; // checked before anything is written
  writeU32(p, 12, src >>> 0);
  writeU32(p, 16, dst >>> 0);
  if (at >= 0) {
    p[at] = 0;
    p[at + 1] = 0;
    let c = internetChecksum(
      p,
      hl,
      total,
      pseudoHeaderSum(src >>> 0, dst >>> 0, protocol, total - hl),
    );
    if (c === 0 && protocol === PROTO_UDP) c = 0xffff; // 0 means "no checksum" in UDP
    p[at] = c >> 8;
    p[at + 1] = c & 0xff;
  }
  p[10] = 0;
  p[11] = 0;
  const ipc = internetChecksum(p, 0, hl);
  p[10] = ipc >> 8;
  p[11] = ipc & 0xff;
  return true;
}
