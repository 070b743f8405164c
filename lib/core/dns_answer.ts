// Edits a DNS answer in place, at the byte level (issue 9). The message is first walked whole
// with strict bounds checks; only if every name, question and record frames correctly are a few
// fields overwritten, each with a value of the same length:
//
//   - A records of announced names: rdata becomes the internal address, TTL 0;
//   - AAAA records of announced names: neutralised (type NEUTRAL_TYPE, TTL 0, rdata zeroed), so
//     no IPv6 address can lead an application around the tunnel;
//   - HTTPS/SVCB records of announced names: ipv4hint addresses become internal addresses,
//     ipv6hint addresses the discard prefix 100::/64 (RFC 6666), TTL 0;
//   - the canary use-application-dns.net: rcode NXDOMAIN, its address records neutralised.
//
// Every other byte stays as it was, compression pointers included, and the length never
// changes, so the same code serves answers over TCP, where a different length would break the
// stream. Nothing here decodes text for anything but comparison and logs: names come out
// escaped (RFC 1035 \DDD for every byte that is not printable ASCII, and for '.' and '\' inside
// a label), so a label holding a newline or ESC cannot reach a log line raw.

import { inSubnet, type Subnet } from "./ip.ts";
import type { Announcement } from "./names.ts";
import { readU16be, readU32be, writeU16be, writeU32be } from "./bytes.ts";

/** Finds the announcement in an (escaped) DNS name; null for an ordinary name. Must not throw. */
export type Pq1NameParser = (name: string) => Announcement | null;

/**
 * Gives an announced server, seen at `realAddress` under `ownerName` (escaped, no final dot),
 * its internal address. `answersQuestion` says whether the record is the answer to the question
 * the message carries (the question name or a CNAME chain from it), as opposed to extra
 * records a resolver or an attacker added. Returns null when no address can be given: the
 * record is then neutralised, never passed with the real address.
 */
export type AssignAddress = (
  announcement: Announcement,
  realAddress: number,
  ownerName: string,
  answersQuestion: boolean,
) => number | null;

export interface AnswerEditOptions {
  parseName: Pq1NameParser;
  assign: AssignAddress;
  /** A records already in this subnet are left alone. */
  subnet: Subnet;
  /** Answer use-application-dns.net with NXDOMAIN (default true). */
  canary?: boolean;
  /** Distinct announced names given addresses per message; records of further ones are
   * neutralised (default 16). Bounds the work and the table growth one answer can cause. */
  maxAnnouncedNames?: number;
}

export interface AnnouncedRecord {
  ownerName: string;
  realAddress: number;
  internalAddress: number;
  announcement: Announcement;
  answersQuestion: boolean;
}

export type AnswerEditResult =
  | { kind: "malformed"; why: string }
  | { kind: "unchanged" }
  | {
    kind: "edited";
    announcements: AnnouncedRecord[];
    /** Records neutralised (AAAA of announced names, unassignable A records). */
    neutralised: number;
    canary: boolean;
  };

export const TYPE_A = 1;
export const TYPE_CNAME = 5;
export const TYPE_AAAA = 28;
export const TYPE_OPT = 41;
export const TYPE_SVCB = 64;
export const TYPE_HTTPS = 65;
/** A private-use type (RFC 6895) that no resolver library asks for or interprets. */
export const NEUTRAL_TYPE = 0xff00;
export const CLASS_IN = 1;
export const SVC_IPV4HINT = 4;
export const SVC_IPV6HINT = 6;
export const RCODE_NXDOMAIN = 3;
export const CANARY_NAME = "use-application-dns.net";
/** First bytes of 100::/64, the discard-only prefix; the rest of the address is zero. */
const DISCARD_V6 = [0x01, 0x00];

const MAX_NAME_HOPS = 64;
const MAX_CNAMES = 16;
/** Distinct addresses of one name given to `assign`; the rest reuse its internal address. */
const MAX_ADDRESSES_PER_NAME = 32;
/** Announced records listed in a result (for logs and tests), at most. */
const MAX_REPORTED = 64;
const MAX_NAME_LENGTH = 255;

/**
 * The end of the name at `o` in the message (after its terminal zero or first pointer), or -1
 * when it is malformed: runs off the end, uses a reserved label type, a pointer that does not
 * point strictly backwards, or exceeds 255 bytes. Pointers are followed to check their target.
 */
export function nameEnd(m: Uint8Array, o: number, limit = m.length): number {
  let end = -1;
  let length = 1;
  let pos = o;
  let floor = o; // a pointer must go below where the current run of labels started
  for (let hops = 0; hops <= MAX_NAME_HOPS;) {
    if (pos >= limit && end < 0) return -1;
    if (pos >= m.length) return -1;
    const len = m[pos];
    if (len === 0) return end < 0 ? pos + 1 : end;
    const tag = len & 0xc0;
    if (tag === 0xc0) {
      if (end < 0 && pos + 2 > limit) return -1;
      if (pos + 2 > m.length) return -1;
      const target = ((len & 0x3f) << 8) | m[pos + 1];
      if (end < 0) end = pos + 2;
      if (target >= floor) return -1;
      floor = target;
      pos = target;
      hops++;
      continue;
    }
    if (tag !== 0) return -1;
    length += len + 1;
    if (length > MAX_NAME_LENGTH) return -1;
    if (end < 0 && pos + 1 + len > limit) return -1;
    if (pos + 1 + len > m.length) return -1;
    pos += 1 + len;
  }
  return -1;
}

/** The escaped, lower-cased text of the (already validated) name at `o`, without final dot. */
export function nameText(m: Uint8Array, o: number): string {
  let out = "";
  let pos = o;
  for (let hops = 0; hops <= MAX_NAME_HOPS; hops++) {
    const len = m[pos];
    if (len === 0) break;
    if ((len & 0xc0) === 0xc0) {
      pos = ((len & 0x3f) << 8) | m[pos + 1];
      continue;
    }
    if (out.length > 0) out += ".";
    for (let i = pos + 1; i <= pos + len; i++) {
      let b = m[i];
      if (b >= 0x41 && b <= 0x5a) b |= 0x20;
      if (b > 0x20 && b < 0x7f && b !== 0x2e && b !== 0x5c) out += String.fromCharCode(b);
      else out += "\\" + String(b).padStart(3, "0");
    }
    pos += 1 + len;
  }
  return out;
}

/** One resource record's fields, as offsets into the message. */
interface RecordRef {
  section: number; // 0 answer, 1 authority, 2 additional
  owner: number;
  type: number;
  klass: number;
  ttlAt: number;
  rdata: number;
  rdlength: number;
}

/** Cheap test whether `p[start:end]` contains "pq1" in any case. */
export function containsPq1(p: Uint8Array, start = 0, end = p.length): boolean {
  let i = p.indexOf(0x31, start + 2);
  while (i >= 0 && i < end) {
    if ((p[i - 2] | 0x20) === 0x70 && (p[i - 1] | 0x20) === 0x71) return true;
    i = p.indexOf(0x31, i + 1);
  }
  return false;
}

/** Whether the first question might be the canary (checked properly after the walk). */
function mightBeCanary(m: Uint8Array): boolean {
  return m.length > 12 + CANARY_NAME.length && m[12] === CANARY_NAME.indexOf(".");
}

/**
 * The records of one message in one typed array (7 numbers each), so that thousands of them
 * cost the garbage collector nothing; `get` fills one reused cursor.
 */
class RecordTable {
  private data: Int32Array;
  length = 0;
  private readonly cursor: RecordRef = {
    section: 0,
    owner: 0,
    type: 0,
    klass: 0,
    ttlAt: 0,
    rdata: 0,
    rdlength: 0,
  };

  constructor(capacity: number) {
    this.data = new Int32Array(7 * Math.max(1, capacity));
  }

  push(
    section: number,
    owner: number,
    type: number,
    klass: number,
    ttlAt: number,
    rdata: number,
    rdlength: number,
  ): void {
    if (7 * (this.length + 1) > this.data.length) {
      const bigger = new Int32Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    const d = this.data, o = 7 * this.length++;
    d[o] = section;
    d[o + 1] = owner;
    d[o + 2] = type;
    d[o + 3] = klass;
    d[o + 4] = ttlAt;
    d[o + 5] = rdata;
    d[o + 6] = rdlength;
  }

  /** Record i in the shared cursor (valid until the next call). */
  get(i: number): RecordRef {
    const d = this.data, o = 7 * i, c = this.cursor;
    c.section = d[o];
    c.owner = d[o + 1];
    c.type = d[o + 2];
    c.klass = d[o + 3];
    c.ttlAt = d[o + 4];
    c.rdata = d[o + 5];
    c.rdlength = d[o + 6];
    return c;
  }
}

interface Walk {
  questions: number[];
  records: RecordTable;
}

/** Frames the whole message; a string saying what is wrong when it does not frame. */
/** Records handled between two yields of the stepwise forms (bounds one step's work). */
export const RECORDS_PER_STEP = 64;

function* walk(m: Uint8Array, perStep: number): Generator<void, Walk | string, void> {
  if (m.length < 12) return "short header";
  const questions: number[] = [];
  // A record takes at least 11 bytes: no message holds more than length / 11 of them.
  const declared = readU16be(m, 6) + readU16be(m, 8) + readU16be(m, 10);
  const records = new RecordTable(Math.min(declared, Math.floor(m.length / 11)));
  let o = 12;
  const qd = readU16be(m, 4);
  for (let i = 0; i < qd; i++) {
    const end = nameEnd(m, o);
    if (end < 0 || end + 4 > m.length) return "question";
    questions.push(o);
    o = end + 4;
  }
  for (let s = 0; s < 3; s++) {
    const count = readU16be(m, 6 + 2 * s);
    for (let i = 0; i < count; i++) {
      const end = nameEnd(m, o);
      if (end < 0 || end + 10 > m.length) return "record header";
      const rdlength = readU16be(m, end + 8);
      const rdata = end + 10;
      if (rdata + rdlength > m.length) return "rdata past the end";
      const type = readU16be(m, end);
      if (type === TYPE_OPT && s !== 2) return "OPT outside the additional section";
      records.push(s, o, type, readU16be(m, end + 2), end + 4, rdata, rdlength);
      o = rdata + rdlength;
      if (records.length % perStep === 0) yield;
    }
  }
  // Bytes after the last record are left alone (they are not ours to judge).
  return { questions, records };
}

/** Neutralises a record in place: private type, TTL 0, rdata zeroed (length kept). */
function neutralise(m: Uint8Array, r: RecordRef): void {
  writeU16be(m, r.ttlAt - 4, NEUTRAL_TYPE);
  writeU32be(m, r.ttlAt, 0);
  m.fill(0, r.rdata, r.rdata + r.rdlength);
}

/**
 * Frames an SVCB/HTTPS rdata: priority, uncompressed target name, parameters in strictly
 * increasing key order, each inside the rdata. The offsets of the parameters, or null.
 */
function svcParams(m: Uint8Array, r: RecordRef): { key: number; at: number; len: number }[] | null {
  const end = r.rdata + r.rdlength;
  let o = r.rdata + 2;
  if (o > end) return null;
  for (let length = 1;;) {
    if (o >= end) return null;
    const len = m[o];
    if (len === 0) {
      o++;
      break;
    }
    if ((len & 0xc0) !== 0) return null; // no compression in SVCB target names (RFC 9460)
    length += len + 1;
    if (length > MAX_NAME_LENGTH || o + 1 + len > end) return null;
    o += 1 + len;
  }
  const params: { key: number; at: number; len: number }[] = [];
  let last = -1;
  while (o < end) {
    if (o + 4 > end) return null;
    const key = readU16be(m, o);
    const len = readU16be(m, o + 2);
    if (key <= last || o + 4 + len > end) return null;
    params.push({ key, at: o + 4, len });
    last = key;
    o += 4 + len;
  }
  return params;
}

/**
 * Edits `m` (a whole DNS message, not its transport) in place. Never throws for any input
 * bytes; what the callbacks throw propagates (the caller then discards its copy). A malformed
 * message is not changed at all.
 */
export function editDnsAnswer(m: Uint8Array, opts: AnswerEditOptions): AnswerEditResult {
  return runSteps(editDnsAnswerInSteps(m, opts, Infinity));
}

/** Runs a stepwise computation to its end. */
export function runSteps<T>(steps: Generator<void, T, void>): T {
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/**
 * The cheap test that decides whether a message can need an edit at all: an answer (QR set,
 * opcode QUERY) holding the bytes "pq1" somewhere, or asking one question that may be the
 * canary. False for nearly every answer; then nothing needs to be copied or walked.
 */
export function mayNeedEdit(m: Uint8Array, canary = true): boolean {
  if (m.length < 12) return true; // let the walk call it malformed
  const flags = readU16be(m, 2);
  if ((flags & 0x8000) === 0 || (flags & 0x7800) !== 0) return false;
  return containsPq1(m, 12) || (canary && readU16be(m, 4) === 1 && mightBeCanary(m));
}

/**
 * `editDnsAnswer` in steps: it yields after every `perStep` records, so a shell can spread one
 * huge answer over several turns and let tunnel packets through in between (issue 9: one
 * 64 KiB answer must not hold the data path for more than a fraction of a millisecond).
 */
export function* editDnsAnswerInSteps(
  m: Uint8Array,
  opts: AnswerEditOptions,
  perStep = RECORDS_PER_STEP,
): Generator<void, AnswerEditResult, void> {
  if (m.length < 12) return { kind: "malformed", why: "short header" };
  const flags = readU16be(m, 2);
  // QR set and opcode QUERY; other messages are not answers we judge.
  if ((flags & 0x8000) === 0 || (flags & 0x7800) !== 0) return { kind: "unchanged" };
  const canaryOn = opts.canary ?? true;
  const pq1 = containsPq1(m, 12);
  // The canary name has no "pq1"; it is recognised by its question, which needs the walk.
  if (!pq1 && !(canaryOn && readU16be(m, 4) === 1 && mightBeCanary(m))) {
    return { kind: "unchanged" };
  }
  const w = yield* walk(m, perStep);
  if (typeof w === "string") return { kind: "malformed", why: w };

  if (canaryOn && w.questions.length === 1 && nameText(m, w.questions[0]) === CANARY_NAME) {
    let neutralised = 0;
    for (let i = 0; i < w.records.length; i++) {
      const r = w.records.get(i);
      if (r.section !== 0 || r.klass !== CLASS_IN) continue;
      if (r.type === TYPE_A || r.type === TYPE_AAAA || r.type === TYPE_HTTPS) {
        neutralise(m, r);
        neutralised++;
      }
    }
    m[3] = (m[3] & 0xf0) | RCODE_NXDOMAIN;
    return { kind: "edited", announcements: [], neutralised, canary: true };
  }
  // Only NOERROR answers carry addresses applications use.
  if ((flags & 0x000f) !== 0 || !pq1) return { kind: "unchanged" };

  // Names that answer the question: the question names and CNAME targets reached from them.
  // Bounded: a chain longer than MAX_CNAMES links is not followed further (its records are
  // still rewritten, only not counted as answering the question).
  const asked = new Set(w.questions.map((q) => nameText(m, q)));
  const cnames: number[] = [];
  for (let i = 0; i < w.records.length && cnames.length < MAX_CNAMES; i++) {
    const r = w.records.get(i);
    if (r.section === 0 && r.type === TYPE_CNAME && r.klass === CLASS_IN) cnames.push(i);
  }
  for (let grew = true, rounds = 0; grew && rounds < MAX_CNAMES; rounds++) {
    grew = false;
    for (const i of cnames) {
      const r = w.records.get(i);
      if (nameEnd(m, r.rdata, r.rdata + r.rdlength) !== r.rdata + r.rdlength) continue;
      if (!asked.has(nameText(m, r.owner))) continue;
      const target = nameText(m, r.rdata);
      if (!asked.has(target)) {
        asked.add(target);
        grew = true;
      }
    }
  }

  // Owner names by where their labels start: the records of one name usually point at the same
  // bytes, so thousands of them cost one decoding.
  const texts = new Map<number, string>();
  const ownerText = (o: number): string => {
    while ((m[o] & 0xc0) === 0xc0) o = ((m[o] & 0x3f) << 8) | m[o + 1];
    let t = texts.get(o);
    if (t === undefined) texts.set(o, t = nameText(m, o));
    return t;
  };
  const parsed = new Map<string, Announcement | null>();
  const given = new Map<string, Map<number, number | null>>(); // owner -> address -> internal
  const announcements: AnnouncedRecord[] = [];
  const maxNames = opts.maxAnnouncedNames ?? 16;
  const named = new Set<string>();
  let neutralised = 0;
  let changed = false;

  const internalFor = (ann: Announcement, owner: string, real: number): number | null => {
    let byAddress = given.get(owner);
    if (byAddress === undefined) given.set(owner, byAddress = new Map());
    const known = byAddress.get(real);
    if (known !== undefined) return known;
    if (byAddress.size >= MAX_ADDRESSES_PER_NAME) {
      // One name, thousands of addresses: all lead to the same server (one key), and so to the
      // internal address it already got here. Asking again would only cost time.
      for (const v of byAddress.values()) if (v !== null) return v;
    }
    let internal: number | null = null;
    if (named.has(owner) || named.size < maxNames) {
      named.add(owner);
      const answers = asked.has(owner);
      internal = opts.assign(ann, real, owner, answers);
      if (internal !== null && !inSubnet(internal, opts.subnet)) internal = null;
      if (internal !== null && announcements.length < MAX_REPORTED) {
        announcements.push({
          ownerName: owner,
          realAddress: real,
          internalAddress: internal,
          announcement: ann,
          answersQuestion: answers,
        });
      }
    }
    byAddress.set(real, internal);
    return internal;
  };

  for (let i = 0; i < w.records.length; i++) {
    if (i % perStep === perStep - 1) yield;
    const r = w.records.get(i);
    if (r.klass !== CLASS_IN) continue;
    if (
      r.type !== TYPE_A && r.type !== TYPE_AAAA && r.type !== TYPE_HTTPS && r.type !== TYPE_SVCB
    ) {
      continue;
    }
    const owner = ownerText(r.owner);
    if (!owner.includes("pq1")) continue;
    let ann = parsed.get(owner);
    if (ann === undefined) {
      ann = opts.parseName(owner);
      parsed.set(owner, ann);
    }
    if (ann === null) continue;

    if (r.type === TYPE_AAAA) {
      neutralise(m, r);
      neutralised++;
      changed = true;
    } else if (r.type === TYPE_A) {
      if (r.rdlength !== 4) {
        neutralise(m, r);
        neutralised++;
        changed = true;
        continue;
      }
      const real = readU32be(m, r.rdata);
      if (inSubnet(real, opts.subnet)) continue;
      const internal = internalFor(ann, owner, real);
      if (internal === null) {
        neutralise(m, r);
        neutralised++;
      } else {
        writeU32be(m, r.rdata, internal);
        writeU32be(m, r.ttlAt, 0);
      }
      changed = true;
    } else {
      if (editSvcb(m, r, ann, owner, opts.subnet, internalFor)) {
        writeU32be(m, r.ttlAt, 0);
      } else {
        neutralise(m, r);
        neutralised++;
      }
      changed = true;
    }
  }
  if (!changed) return { kind: "unchanged" };
  return { kind: "edited", announcements, neutralised, canary: false };
}

/**
 * Rewrites the address hints of one SVCB/HTTPS record of an announced name; false when the
 * record must be neutralised instead (it does not frame, or a hint gets no internal address).
 */
function editSvcb(
  m: Uint8Array,
  r: RecordRef,
  ann: Announcement,
  owner: string,
  subnet: Subnet,
  internalFor: (ann: Announcement, owner: string, real: number) => number | null,
): boolean {
  const params = svcParams(m, r);
  if (params === null) return false;
  for (const p of params) {
    if (p.key === SVC_IPV4HINT) {
      if (p.len === 0 || p.len % 4 !== 0) return false;
    } else if (p.key === SVC_IPV6HINT) {
      if (p.len === 0 || p.len % 16 !== 0) return false;
    }
  }
  for (const p of params) {
    if (p.key === SVC_IPV4HINT) {
      for (let a = p.at; a < p.at + p.len; a += 4) {
        const real = readU32be(m, a);
        if (inSubnet(real, subnet)) continue;
        const internal = internalFor(ann, owner, real);
        if (internal === null) return false;
        writeU32be(m, a, internal);
      }
    } else if (p.key === SVC_IPV6HINT) {
      for (let a = p.at; a < p.at + p.len; a += 16) {
        m.fill(0, a, a + 16);
        m[a] = DISCARD_V6[0];
        m[a + 1] = DISCARD_V6[1];
      }
    }
  }
  return true;
}
