// The packet `pqconnect check` sends inside the tunnel, and how it recognises the answer: an
// ICMP echo request (the server's host answers it at the address the server delivers to), or a
// TCP SYN to a named port (a SYN-ACK or a RST both prove the path). Pure: bytes in, bytes out.

import {
  internetChecksum,
  ipv4HeaderLength,
  PROTO_ICMP,
  PROTO_TCP,
  pseudoHeaderSum,
  setIpv4HeaderChecksum,
} from "../core/ip.ts";
import { readU16be, readU32be, writeU16be, writeU32be } from "../core/bytes.ts";

/** Inner source and destination: the server replaces both (its NAT), so any will do. The
 * destination is 0.0.0.0 as the reference client sends it. */
const INNER_SRC = 0x0a2b0002; // 10.43.0.2
const INNER_DST = 0;

export type ProbeKind = { kind: "icmp"; id: number } | { kind: "tcp"; port: number; sport: number };

function ipv4(protocol: number, payload: Uint8Array, ident: number): Uint8Array {
  const p = new Uint8Array(20 + payload.length);
  p[0] = 0x45;
  writeU16be(p, 2, p.length);
  writeU16be(p, 4, ident);
  p[8] = 64;
  p[9] = protocol;
  writeU32be(p, 12, INNER_SRC);
  writeU32be(p, 16, INNER_DST);
  p.set(payload, 20);
  setIpv4HeaderChecksum(p);
  return p;
}

/** An ICMP echo request with identifier `id` and sequence number `seq`. */
export function icmpEcho(id: number, seq: number): Uint8Array {
  const icmp = new Uint8Array(8 + 32);
  icmp[0] = 8;
  writeU16be(icmp, 4, id);
  writeU16be(icmp, 6, seq);
  icmp.set(new TextEncoder().encode("pqconnect check tunnel probe...."), 8);
  writeU16be(icmp, 2, internetChecksum(icmp));
  return ipv4(PROTO_ICMP, icmp, seq);
}

/** A TCP SYN from `sport` to `port` with sequence number `isn`. */
export function tcpSyn(sport: number, port: number, isn: number): Uint8Array {
  const tcp = new Uint8Array(24);
  writeU16be(tcp, 0, sport);
  writeU16be(tcp, 2, port);
  writeU32be(tcp, 4, isn >>> 0);
  tcp[12] = 6 << 4; // 24-byte header: one MSS option
  tcp[13] = 0x02; // SYN
  writeU16be(tcp, 14, 64240);
  tcp.set([2, 4, 0x05, 0x14], 20); // MSS 1300: fits any tunnel MTU
  const sum = pseudoHeaderSum(INNER_SRC, INNER_DST, PROTO_TCP, tcp.length);
  writeU16be(tcp, 16, internetChecksum(tcp, 0, tcp.length, sum));
  return ipv4(PROTO_TCP, tcp, isn & 0xffff);
}

export interface ProbeAnswer {
  /** Sequence number (ICMP) or initial sequence number (TCP) of the probe answered. */
  probe: number;
  /** Where the answer came from (the server's delivery address) and went to (our internal
   * address at the server). */
  from: number;
  to: number;
  what: string;
}

/**
 * Whether `packet` (a decrypted tunnel payload) answers one of the probes `sent` (ICMP
 * sequence numbers, or TCP initial sequence numbers); null for anything else. Bounds-checked.
 */
export function matchAnswer(
  packet: Uint8Array,
  probe: ProbeKind,
  sent: ReadonlySet<number>,
): ProbeAnswer | null {
  const hl = ipv4HeaderLength(packet);
  if (hl === 0) return null;
  const total = readU16be(packet, 2);
  if (total > packet.length) return null;
  const from = readU32be(packet, 12);
  const to = readU32be(packet, 16);
  const protocol = packet[9];
  if (probe.kind === "icmp") {
    if (protocol !== PROTO_ICMP || total < hl + 8 || packet[hl] !== 0) return null;
    if (readU16be(packet, hl + 4) !== probe.id) return null;
    const seq = readU16be(packet, hl + 6);
    return sent.has(seq) ? { probe: seq, from, to, what: "ICMP echo reply" } : null;
  }
  if (protocol !== PROTO_TCP || total < hl + 20) return null;
  if (readU16be(packet, hl) !== probe.port || readU16be(packet, hl + 2) !== probe.sport) {
    return null;
  }
  const flags = packet[hl + 13];
  const isn = (readU32be(packet, hl + 8) - 1) >>> 0;
  if (!sent.has(isn) || !(flags & 0x10)) return null; // must acknowledge our SYN
  if ((flags & 0x12) === 0x12) {
    return { probe: isn, from, to, what: `TCP SYN-ACK (port ${probe.port} open)` };
  }
  if (flags & 0x04) return { probe: isn, from, to, what: `TCP RST (port ${probe.port} closed)` };
  return null;
}

/** The RST that politely closes a half-open connection after a SYN-ACK (no state left). */
export function tcpRst(sport: number, port: number, seq: number): Uint8Array {
  const tcp = new Uint8Array(20);
  writeU16be(tcp, 0, sport);
  writeU16be(tcp, 2, port);
  writeU32be(tcp, 4, seq >>> 0);
  tcp[12] = 5 << 4;
  tcp[13] = 0x04;
  const sum = pseudoHeaderSum(INNER_SRC, INNER_DST, PROTO_TCP, tcp.length);
  writeU16be(tcp, 16, internetChecksum(tcp, 0, tcp.length, sum));
  return ipv4(PROTO_TCP, tcp, seq & 0xffff);
}
