// Client-side DNS interception: turns A records of pq1-announced servers in DNS answers into
// addresses from the client's tunnel subnet (spec sections 2 and 9).
//
// Input is a whole IPv4/UDP packet as NFQUEUE hands it over (an answer arriving for this
// host). Nearly every answer is ordinary, so the first step is a byte scan for "pq1": a name
// carrying an announcement has that label literally somewhere in the message (compression
// pointers only point back at bytes that are present), so an answer without those three bytes
// cannot hold one. Only the rest is parsed.
//
// The record framing is walked here with strict bounds checks before dns-packet decodes each
// record: dns-packet trusts RDLENGTH for few types and would silently misread a truncated or
// inconsistent message; such a message must pass untouched instead of being "repaired".

import dnsPacket from "dns-packet";
import { Buffer } from "node:buffer";
import {
  inSubnet,
  internetChecksum,
  ipv4HeaderLength,
  ipv4IsFragment,
  parseIpv4Address,
  parseSubnet,
  PROTO_UDP,
  pseudoHeaderSum,
  setIpv4HeaderChecksum,
  type Subnet,
} from "./ip.ts";
import { readU16be as u16 } from "./bytes.ts";

/** What a pq1 label says (the shape `parsePq1Name` of lib/names.ts returns). */
export interface Pq1Announcement {
  keyHash: Uint8Array;
  cryptoPort?: number;
  keyPort?: number;
}

/** Finds the announcement in a DNS name; null for an ordinary name. Must not throw. */
export type Pq1NameParser = (name: string) => Pq1Announcement | null;

/**
 * Gives an announced server (seen at `realAddress` under `ownerName`) its internal address in
 * the client subnet, as a dotted quad. Called once per distinct (owner, address) in an answer.
 * Returning null leaves that A record as it is (e.g. the pool is exhausted). Throwing makes the
 * whole answer pass unchanged.
 */
export type AssignAddress = (
  announcement: Pq1Announcement,
  realAddress: string,
  ownerName: string,
) => string | null;

export interface AnnouncedServer {
  ownerName: string;
  realAddress: string;
  internalAddress: string;
  announcement: Pq1Announcement;
}

export type PassReason =
  | "not-udp-dns" // not a well-formed unfragmented IPv4/UDP packet from port 53
  | "not-answer" // a query, another opcode, or an error rcode
  | "no-pq1" // fast path: no "pq1" bytes anywhere
  | "malformed" // the DNS message does not parse
  | "no-announcement" // parsed, but nothing to rewrite
  | "assign-failed" // the assign callback threw or returned something unusable
  | "too-large"; // the rewritten answer would not fit the requester's UDP size

export type DnsRewriteResult =
  | { action: "pass"; reason: PassReason }
  | { action: "rewrite"; packet: Uint8Array; announcements: AnnouncedServer[] };

export interface DnsRewriteOptions {
  parseName: Pq1NameParser;
  assign: AssignAddress;
  /** A records already inside this subnet are left alone. Default 10.43.0.0/16. */
  clientSubnet?: Subnet | string;
}

export type DnsRewriteStats = Record<PassReason | "rewritten", number>;

export const DEFAULT_CLIENT_SUBNET = "10.43.0.0/16";

const DNS_PORT = 53;
const TYPE_A = 1;
const TYPE_AAAA = 28;
const TYPE_OPT = 41;
// A requester without EDNS accepts 512 bytes; with EDNS we assume the 1232 that resolvers
// have defaulted to since DNS flag day 2020 (the real value is in the query, not the answer).
const PLAIN_UDP_LIMIT = 512;
const EDNS_UDP_LIMIT = 1232;

/**
 * Cheap test whether the UDP payload `p[start:end]` contains "pq1" (case-insensitive).
 * False means the message cannot carry an announcement.
 */
export function containsPq1(p: Uint8Array, start = 0, end = p.length): boolean {
  // indexOf runs natively; '1' is rarer than a letter test per byte would be costly.
  let i = p.indexOf(0x31, start + 2);
  while (i >= 0 && i < end) {
    if ((p[i - 2] | 0x20) === 0x70 && (p[i - 1] | 0x20) === 0x71) return true;
    i = p.indexOf(0x31, i + 1);
  }
  return false;
}

/** Stateful rewriter: holds the callbacks and counts what happened to each packet. */
export class DnsRewriter {
  readonly stats: DnsRewriteStats = {
    "not-udp-dns": 0,
    "not-answer": 0,
    "no-pq1": 0,
    malformed: 0,
    "no-announcement": 0,
    "assign-failed": 0,
    "too-large": 0,
    rewritten: 0,
  };
  readonly #opts: DnsRewriteOptions;
  readonly #subnet: Subnet;

  constructor(opts: DnsRewriteOptions) {
    this.#opts = opts;
    const s = opts.clientSubnet ?? DEFAULT_CLIENT_SUBNET;
    this.#subnet = typeof s === "string" ? parseSubnet(s) : s;
  }

  /** Decides what to do with one queued packet. Never throws. */
  process(packet: Uint8Array): DnsRewriteResult {
    let r: DnsRewriteResult;
    try {
      r = rewriteDnsAnswer(packet, this.#opts, this.#subnet);
    } catch {
      r = { action: "pass", reason: "malformed" };
    }
    this.stats[r.action === "pass" ? r.reason : "rewritten"]++;
    return r;
  }
}

/**
 * One-shot form of `DnsRewriter.process` (parses the subnet on every call; prefer the class
 * on a hot path). Never throws.
 */
export function rewriteDnsPacket(packet: Uint8Array, opts: DnsRewriteOptions): DnsRewriteResult {
  return new DnsRewriter(opts).process(packet);
}

function pass(reason: PassReason): DnsRewriteResult {
  return { action: "pass", reason };
}

function rewriteDnsAnswer(
  packet: Uint8Array,
  opts: DnsRewriteOptions,
  subnet: Subnet,
): DnsRewriteResult {
  // --- fast path: IPv4 / UDP / DNS header checks and the byte scan
  const hl = ipv4HeaderLength(packet);
  if (hl === 0 || packet[9] !== PROTO_UDP || ipv4IsFragment(packet)) return pass("not-udp-dns");
  const ipEnd = (packet[2] << 8) | packet[3];
  if (ipEnd - hl < 8) return pass("not-udp-dns");
  const udpLen = (packet[hl + 4] << 8) | packet[hl + 5];
  if (udpLen < 8 || hl + udpLen > ipEnd) return pass("not-udp-dns");
  if (((packet[hl] << 8) | packet[hl + 1]) !== DNS_PORT) return pass("not-udp-dns");
  const dnsStart = hl + 8;
  const dnsEnd = hl + udpLen;
  if (dnsEnd - dnsStart < 12) return pass("malformed");
  const flags = (packet[dnsStart + 2] << 8) | packet[dnsStart + 3];
  // QR set, opcode QUERY, rcode NOERROR
  if ((flags & 0x8000) === 0 || (flags & 0x7800) !== 0 || (flags & 0x000f) !== 0) {
    return pass("not-answer");
  }
  if (!containsPq1(packet, dnsStart + 12, dnsEnd)) return pass("no-pq1");

  // --- slow path: parse, rewrite, re-encode
  const dns = packet.subarray(dnsStart, dnsEnd);
  const msg = decodeStrict(dns);
  if (msg === null) return pass("malformed");

  const announcements: AnnouncedServer[] = [];
  const assigned = new Map<string, string | null>();
  const parsedNames = new Map<string, Pq1Announcement | null>();
  const announcementOf = (name: string) => {
    const key = name.toLowerCase();
    if (!parsedNames.has(key)) parsedNames.set(key, opts.parseName(name));
    return parsedNames.get(key) ?? null;
  };

  let changed = false;
  for (const section of [msg.answers, msg.authorities, msg.additionals]) {
    for (let i = 0; i < section.length; i++) {
      const rr = section[i];
      if (rr.type !== "A" && rr.type !== "AAAA") continue;
      if (rr.class !== "IN") continue;
      const ann = announcementOf(rr.name);
      if (ann === null) continue;
      if (rr.type === "AAAA") {
        // The tunnel carries IPv4 only: an IPv6 address would bypass it.
        section.splice(i--, 1);
        changed = true;
        continue;
      }
      const real = rr.data as string;
      const realNum = parseIpv4Address(real);
      if (realNum === null) return pass("malformed");
      if (inSubnet(realNum, subnet)) continue;
      const key = `${rr.name.toLowerCase()} ${real}`;
      let internal = assigned.get(key);
      if (internal === undefined) {
        try {
          internal = opts.assign(ann, real, rr.name);
        } catch {
          return pass("assign-failed");
        }
        if (internal !== null) {
          const n = parseIpv4Address(internal);
          if (n === null) return pass("assign-failed");
          announcements.push({
            ownerName: rr.name,
            realAddress: real,
            internalAddress: internal,
            announcement: ann,
          });
        }
        assigned.set(key, internal);
      }
      if (internal === null) continue;
      rr.data = internal;
      rr.ttl = 0;
      changed = true;
    }
  }
  if (!changed) return pass("no-announcement");

  const hasOpt = msg.additionals.some((rr) => rr.type === "OPT");
  const limit = Math.max(hasOpt ? EDNS_UDP_LIMIT : PLAIN_UDP_LIMIT, dns.length);
  let encoded = encode(msg);
  if (encoded.length > limit) {
    // dns-packet does not compress names, so the answer grows; shed the optional sections
    // before giving up (the answer section is what the requester needs).
    msg.authorities = [];
    msg.additionals = msg.additionals.filter((rr) => rr.type === "OPT");
    encoded = encode(msg);
    if (encoded.length > limit) return pass("too-large");
  }
  return {
    action: "rewrite",
    packet: buildUdpPacket(packet, hl, encoded),
    announcements,
  };
}

interface DnsRecord {
  name: string;
  type: string;
  class?: string;
  ttl?: number;
  data?: unknown;
  [k: string]: unknown;
}

interface DnsMessage {
  questions: unknown[];
  answers: DnsRecord[];
  authorities: DnsRecord[];
  additionals: DnsRecord[];
  [k: string]: unknown;
}

/**
 * Skips a (possibly compressed) name starting at `o`; returns the offset after it in the
 * message, or -1 when it runs off the end or uses a reserved label type. Where pointers lead
 * is checked by dns-packet when it decodes the name.
 */
function skipName(p: Uint8Array, o: number): number {
  for (let labels = 0; labels < 128; labels++) {
    if (o >= p.length) return -1;
    const len = p[o];
    if (len === 0) return o + 1;
    if ((len & 0xc0) === 0xc0) return o + 2 <= p.length ? o + 2 : -1;
    if ((len & 0xc0) !== 0) return -1;
    o += 1 + len;
  }
  return -1;
}

/**
 * Decodes a DNS message with dns-packet, after checking the framing of every question and
 * record independently, and checks that dns-packet consumed exactly RDLENGTH for each record.
 * Null when anything is inconsistent.
 */
function decodeStrict(dns: Uint8Array): DnsMessage | null {
  const buf = Buffer.from(dns.buffer, dns.byteOffset, dns.byteLength);
  // The header alone (id, flags), decoded from a copy whose section counts are zeroed.
  const head = Buffer.alloc(12);
  head.set(dns.subarray(0, 4));
  let header: DnsMessage;
  try {
    header = dnsPacket.decode(head) as DnsMessage;
  } catch {
    return null;
  }
  const qd = u16(dns, 4);
  let o = 12;
  const questions: unknown[] = [];
  for (let i = 0; i < qd; i++) {
    const end = skipName(dns, o);
    if (end < 0 || end + 4 > dns.length) return null;
    try {
      questions.push(dnsPacket.question.decode(buf, o));
    } catch {
      return null;
    }
    if (dnsPacket.question.decode.bytes !== end + 4 - o) return null;
    o = end + 4;
  }
  const sections: DnsRecord[][] = [[], [], []];
  for (let s = 0; s < 3; s++) {
    const count = u16(dns, 6 + 2 * s);
    for (let i = 0; i < count; i++) {
      const nameEnd = skipName(dns, o);
      if (nameEnd < 0 || nameEnd + 10 > dns.length) return null;
      const type = u16(dns, nameEnd);
      const rdlen = u16(dns, nameEnd + 8);
      const end = nameEnd + 10 + rdlen;
      if (end > dns.length) return null;
      if ((type === TYPE_A && rdlen !== 4) || (type === TYPE_AAAA && rdlen !== 16)) return null;
      if (type === TYPE_OPT && s !== 2) return null;
      let rr: DnsRecord;
      try {
        rr = dnsPacket.answer.decode(buf, o) as DnsRecord;
      } catch {
        return null;
      }
      if (dnsPacket.answer.decode.bytes !== end - o) return null;
      sections[s].push(rr);
      o = end;
    }
  }
  // Trailing bytes after the last record are tolerated (and dropped on re-encoding).
  return {
    ...header,
    questions,
    answers: sections[0],
    authorities: sections[1],
    additionals: sections[2],
  };
}

function encode(msg: DnsMessage): Uint8Array {
  const b = dnsPacket.encode(msg) as Uint8Array;
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

/**
 * A new IPv4/UDP packet: the original IP header (options included) and UDP ports around the
 * new DNS payload, with lengths and both checksums recomputed.
 */
function buildUdpPacket(orig: Uint8Array, hl: number, payload: Uint8Array): Uint8Array {
  const udpLen = 8 + payload.length;
  const total = hl + udpLen;
  const out = new Uint8Array(total);
  out.set(orig.subarray(0, hl + 4));
  out[2] = total >> 8;
  out[3] = total & 0xff;
  setIpv4HeaderChecksum(out);
  out[hl + 4] = udpLen >> 8;
  out[hl + 5] = udpLen & 0xff;
  out.set(payload, hl + 8);
  const src = ((out[12] << 24) | (out[13] << 16) | (out[14] << 8) | out[15]) >>> 0;
  const dst = ((out[16] << 24) | (out[17] << 16) | (out[18] << 8) | out[19]) >>> 0;
  let c = internetChecksum(out, hl, total, pseudoHeaderSum(src, dst, PROTO_UDP, udpLen));
  if (c === 0) c = 0xffff;
  out[hl + 6] = c >> 8;
  out[hl + 7] = c & 0xff;
  return out;
}
