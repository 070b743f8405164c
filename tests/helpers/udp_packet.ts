// Test helper: wraps a UDP payload in an IPv4/UDP packet with valid checksums, and checks
// such packets, using code independent of lib/core/ip.ts and lib/core/nat.ts.

function sum16(parts: Uint8Array[]): number {
  let s = 0;
  for (const part of parts) {
    for (let i = 0; i < part.length; i += 2) {
      s += (part[i] << 8) | (i + 1 < part.length ? part[i + 1] : 0);
      s = (s & 0xffff) + (s >>> 16);
    }
  }
  return s;
}

function quad(s: string): number[] {
  return s.split(".").map(Number);
}

export function udpPacket(
  src: string,
  dst: string,
  sport: number,
  dport: number,
  payload: Uint8Array,
): Uint8Array {
  const total = 28 + payload.length;
  const p = new Uint8Array(total);
  p.set([0x45, 0, total >> 8, total & 0xff, 0xbe, 0xef, 0x40, 0, 64, 17, 0, 0]);
  p.set(quad(src), 12);
  p.set(quad(dst), 16);
  const ic = ~sum16([p.subarray(0, 20)]) & 0xffff;
  p[10] = ic >> 8;
  p[11] = ic & 0xff;
  const ul = 8 + payload.length;
  p.set([sport >> 8, sport & 0xff, dport >> 8, dport & 0xff, ul >> 8, ul & 0xff], 20);
  p.set(payload, 28);
  let uc = ~sum16([pseudo(p, ul), p.subarray(20)]) & 0xffff;
  if (uc === 0) uc = 0xffff;
  p[26] = uc >> 8;
  p[27] = uc & 0xff;
  return p;
}

function pseudo(p: Uint8Array, udpLen: number): Uint8Array {
  const ph = new Uint8Array(12);
  ph.set(p.subarray(12, 20));
  ph[9] = 17;
  ph[10] = udpLen >> 8;
  ph[11] = udpLen & 0xff;
  return ph;
}

/** Checks lengths and both checksums of an IPv4/UDP packet (options allowed); returns
 * the UDP payload, or throws describing the first problem. */
export function checkUdpPacket(p: Uint8Array): Uint8Array {
  const hl = (p[0] & 15) * 4;
  if (p[0] >> 4 !== 4) throw new Error("not IPv4");
  const total = (p[2] << 8) | p[3];
  if (total !== p.length) throw new Error(`total length ${total} != ${p.length}`);
  if (sum16([p.subarray(0, hl)]) !== 0xffff) throw new Error("bad IP header checksum");
  if (p[9] !== 17) throw new Error("not UDP");
  const ul = (p[hl + 4] << 8) | p[hl + 5];
  if (ul !== total - hl) throw new Error(`UDP length ${ul} != ${total - hl}`);
  const ph = new Uint8Array(12);
  ph.set(p.subarray(12, 20));
  ph[9] = 17;
  ph[10] = ul >> 8;
  ph[11] = ul & 0xff;
  if (((p[hl + 6] << 8) | p[hl + 7]) !== 0 && sum16([ph, p.subarray(hl)]) !== 0xffff) {
    throw new Error("bad UDP checksum");
  }
  return p.subarray(hl + 8);
}
