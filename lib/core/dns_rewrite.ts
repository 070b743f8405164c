// Client-side DNS interception (spec sections 2 and 9): takes a whole IPv4 packet as NFQUEUE
// hands it over — a DNS answer over UDP, or a TCP segment from port 53 — and edits the DNS
// message inside it in place (lib/core/dns_answer.ts). The packet keeps its length; only the
// UDP or TCP checksum is recomputed. Nothing is re-encoded, so bytes this code does not mean to
// change cannot change.
//
// Over TCP a segment is edited only when it holds whole messages (each with its two-byte
// length); an answer spread over several segments passes unchanged and is counted, since
// editing it would need the stream reassembled.

import {
  type AnnouncedRecord,
  type AnswerEditOptions,
  type AssignAddress,
  editDnsAnswerInSteps,
  mayNeedEdit,
  type Pq1NameParser,
  RECORDS_PER_STEP,
  runSteps,
} from "./dns_answer.ts";
import { readU16be } from "./bytes.ts";
import {
  ipv4HeaderLength,
  ipv4IsFragment,
  parseSubnet,
  PROTO_TCP,
  PROTO_UDP,
  setTransportChecksum,
  type Subnet,
} from "./ip.ts";

export type { AnnouncedRecord, AssignAddress, Pq1NameParser } from "./dns_answer.ts";
export { containsPq1 } from "./dns_answer.ts";

export type PassReason =
  | "not-dns" // not an unfragmented IPv4 UDP/TCP packet from port 53 with a payload
  | "unchanged" // a DNS message with nothing to edit
  | "malformed" // the DNS message does not frame (passes untouched)
  | "tcp-partial" // a TCP segment that does not hold whole messages
  | "assign-failed"; // the assign callback threw

export type DnsRewriteResult =
  | { action: "pass"; reason: PassReason }
  | {
    action: "rewrite";
    packet: Uint8Array;
    announcements: AnnouncedRecord[];
    neutralised: number;
    canary: boolean;
  };

export interface DnsRewriteOptions {
  parseName: Pq1NameParser;
  assign: AssignAddress;
  /** A records already inside this subnet are left alone. Default 10.43.0.0/16. */
  clientSubnet?: Subnet | string;
  /** Answer use-application-dns.net with NXDOMAIN (default true). */
  canary?: boolean;
  /** See AnswerEditOptions.maxAnnouncedNames. */
  maxAnnouncedNames?: number;
}

export type DnsRewriteStats = Record<PassReason | "rewritten" | "canary" | "neutralised", number>;

export const DEFAULT_CLIENT_SUBNET = "10.43.0.0/16";
const DNS_PORT = 53;

/** Stateful rewriter: holds the callbacks and counts what happened to each packet. */
export class DnsRewriter {
  readonly stats: DnsRewriteStats = {
    "not-dns": 0,
    unchanged: 0,
    malformed: 0,
    "tcp-partial": 0,
    "assign-failed": 0,
    rewritten: 0,
    canary: 0,
    neutralised: 0,
  };
  readonly #edit: AnswerEditOptions;

  constructor(opts: DnsRewriteOptions) {
    const s = opts.clientSubnet ?? DEFAULT_CLIENT_SUBNET;
    this.#edit = {
      parseName: opts.parseName,
      assign: opts.assign,
      subnet: typeof s === "string" ? parseSubnet(s) : s,
      canary: opts.canary,
      maxAnnouncedNames: opts.maxAnnouncedNames,
    };
  }

  /** Decides what to do with one queued packet. Never throws; never changes `packet`. */
  process(packet: Uint8Array): DnsRewriteResult {
    return this.quick(packet) ?? runSteps(this.processInSteps(packet, Infinity));
  }

  /**
   * The verdict for a packet that needs no edit (nearly all of them), found without copying or
   * walking anything; null when the packet has to go through `processInSteps`.
   */
  quick(packet: Uint8Array): DnsRewriteResult | null {
    const where = locate(packet);
    let reason: PassReason;
    if (typeof where === "string") reason = where;
    else if (!needsEdit(packet, where.messages, this.#edit)) reason = "unchanged";
    else return null;
    this.stats[reason]++;
    return pass(reason);
  }

  /**
   * `process` in steps of at most `perStep` records (see editDnsAnswerInSteps). The packet
   * must stay unchanged until the last step; the callbacks run inside the steps.
   */
  *processInSteps(
    packet: Uint8Array,
    perStep = RECORDS_PER_STEP,
  ): Generator<void, DnsRewriteResult, void> {
    let r: DnsRewriteResult;
    try {
      r = yield* rewrite(packet, this.#edit, perStep);
    } catch {
      r = { action: "pass", reason: "assign-failed" };
    }
    if (r.action === "pass") {
      this.stats[r.reason]++;
    } else {
      this.stats.rewritten++;
      if (r.canary) this.stats.canary++;
      this.stats.neutralised += r.neutralised;
    }
    return r;
  }
}

function pass(reason: PassReason): DnsRewriteResult {
  return { action: "pass", reason };
}

interface Located {
  hl: number;
  total: number;
  proto: number;
  /** The DNS messages inside, as [start, end) in the packet. */
  messages: [number, number][];
}

/** Where the DNS messages of an IPv4 UDP/TCP packet from port 53 are, or why there are none. */
function locate(packet: Uint8Array): Located | PassReason {
  const hl = ipv4HeaderLength(packet);
  if (hl === 0 || ipv4IsFragment(packet)) return "not-dns";
  const total = readU16be(packet, 2);
  if (total > packet.length) return "not-dns";
  const proto = packet[9];
  if (proto !== PROTO_UDP && proto !== PROTO_TCP) return "not-dns";
  if (total - hl < (proto === PROTO_UDP ? 8 : 20)) return "not-dns";
  if (readU16be(packet, hl) !== DNS_PORT) return "not-dns";
  const messages: [number, number][] = [];
  if (proto === PROTO_UDP) {
    const udpLen = readU16be(packet, hl + 4);
    if (udpLen < 8 || hl + udpLen > total) return "not-dns";
    messages.push([hl + 8, hl + udpLen]);
  } else {
    const dataOff = (packet[hl + 12] >> 4) * 4;
    if (dataOff < 20 || hl + dataOff > total) return "not-dns";
    let o = hl + dataOff;
    if (o === total) return "not-dns"; // a bare ACK, SYN or FIN
    while (o < total) {
      if (o + 2 > total) return "tcp-partial";
      const len = readU16be(packet, o);
      if (o + 2 + len > total) return "tcp-partial";
      messages.push([o + 2, o + 2 + len]);
      o += 2 + len;
    }
  }
  return { hl, total, proto, messages };
}

function needsEdit(
  packet: Uint8Array,
  messages: [number, number][],
  opts: AnswerEditOptions,
): boolean {
  return messages.some(([s, e]) => mayNeedEdit(packet.subarray(s, e), opts.canary ?? true));
}

function* rewrite(
  packet: Uint8Array,
  opts: AnswerEditOptions,
  perStep: number,
): Generator<void, DnsRewriteResult, void> {
  const where = locate(packet);
  if (typeof where === "string") return pass(where);
  const { hl, total, proto, messages } = where;
  if (!needsEdit(packet, messages, opts)) return pass("unchanged");

  // Cheap first: most answers have nothing to edit, and then nothing is copied.
  let out: Uint8Array | null = null;
  const announcements: AnnouncedRecord[] = [];
  let neutralised = 0;
  let canary = false;
  let malformed = false;
  for (const [start, end] of messages) {
    const copy = packet.slice(start, end);
    const r = yield* editDnsAnswerInSteps(copy, opts, perStep);
    if (r.kind === "malformed") malformed = true;
    if (r.kind !== "edited") continue;
    out ??= packet.slice(0, total);
    out.set(copy, start);
    announcements.push(...r.announcements);
    neutralised += r.neutralised;
    canary ||= r.canary;
  }
  if (out === null) return pass(malformed ? "malformed" : "unchanged");
  yield; // the copy and the checksum below cover the whole packet: a step of their own
  if (proto === PROTO_UDP) setUdpChecksum(out, hl);
  else setTransportChecksum(out, hl, total, PROTO_TCP);
  return { action: "rewrite", packet: out, announcements, neutralised, canary };
}

/** Recomputes the UDP checksum, unless the sender sent none (zero), which stays none. */
function setUdpChecksum(p: Uint8Array, hl: number): void {
  if (readU16be(p, hl + 6) === 0) return;
  setTransportChecksum(p, hl, hl + readU16be(p, hl + 4), PROTO_UDP);
}
