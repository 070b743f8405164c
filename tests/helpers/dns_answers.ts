// DNS answers built byte by byte for tests and benches.

import { udpPacket } from "./udp_packet.ts";

/** Bytes of a name in wire form (no compression). */
export function wireName(name: string): number[] {
  const out: number[] = [];
  for (const label of name.split(".").filter((l) => l.length > 0)) {
    out.push(label.length, ...new TextEncoder().encode(label));
  }
  out.push(0);
  return out;
}

/**
 * The largest answer a resolver could hand the client over UDP: one question for `name`, then
 * as many A records for it as fit in one IPv4 datagram (each owner a pointer to the question
 * name, 16 bytes per record), addresses 198.18.x.y. As an IPv4/UDP packet from port 53.
 */
export function maximalAnswer(
  name: string,
  opts: { src?: string; dst?: string; dstPort?: number; id?: number } = {},
): Uint8Array {
  const head = [
    (opts.id ?? 3) >> 8,
    (opts.id ?? 3) & 0xff,
    0x81,
    0x80,
    0,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
    ...wireName(name),
    0,
    1,
    0,
    1,
  ];
  const count = Math.floor((65_507 - head.length) / 16);
  const dns = new Uint8Array(head.length + 16 * count);
  dns.set(head);
  dns[6] = count >> 8;
  dns[7] = count & 0xff;
  for (let i = 0; i < count; i++) {
    dns.set(
      [0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 198, 18, i >> 8, i & 0xff],
      head.length + 16 * i,
    );
  }
  return udpPacket(
    opts.src ?? "198.18.0.53",
    opts.dst ?? "198.18.0.2",
    53,
    opts.dstPort ?? 40000,
    dns,
  );
}
