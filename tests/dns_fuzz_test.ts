// Property test of the DNS answer editor over 200,000 seeded random answers: every byte outside
// the fields the editor may change (type, TTL and RDATA of address-bearing records of announced
// names; the rcode of the canary) comes out identical, compression pointers and unrelated
// records included; what must change did change; a message the independent strict reader
// (tests/helpers/dns_strict.ts) rejects comes out untouched.
//
// PQTS_DNS_FUZZ=N runs N answers instead (seeded by PQTS_DNS_FUZZ_SEED, default 9).

import assert from "node:assert/strict";
import { DnsRewriter } from "../lib/core/dns_rewrite.ts";
import { CANARY_NAME, NEUTRAL_TYPE } from "../lib/core/dns_answer.ts";
import { formatPq1Label, parsePq1Name } from "../lib/core/names.ts";
import { inSubnet, parseSubnet } from "../lib/core/ip.ts";
import { presentName, readStrictMessage, type StrictRecord } from "./helpers/dns_strict.ts";
import { checkUdpPacket, udpPacket } from "./helpers/udp_packet.ts";

const COUNT = Number(Deno.env.get("PQTS_DNS_FUZZ") ?? 200_000);
const SEED = Number(Deno.env.get("PQTS_DNS_FUZZ_SEED") ?? 9);
const SUBNET = parseSubnet("10.43.0.0/16");

/** xorshift32: deterministic, so a failure names its seed and index. */
class Rng {
  constructor(private s: number) {
    if (this.s === 0) this.s = 1;
  }
  u32(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.s = x >>> 0);
  }
  int(n: number): number {
    return this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  bytes(n: number): number[] {
    return Array.from({ length: n }, () => this.int(256));
  }
}

const enc = (s: string) => [...new TextEncoder().encode(s)];

/** Builds one random message; names are written through a suffix table for compression. */
interface PoolName {
  labels: number[][];
  /** One key per suffix (labels i..end), for the compression table. */
  keys: string[];
}

function poolName(labels: number[][]): PoolName {
  return { labels, keys: labels.map((_, i) => labels.slice(i).map((l) => l.join(",")).join("|")) };
}

function randomMessage(rng: Rng, labels: PoolName[]): Uint8Array {
  const out: number[] = [];
  const suffixes = new Map<string, number>();
  const writeName = (name: PoolName) => {
    for (let i = 0; i < name.labels.length; i++) {
      const prior = suffixes.get(name.keys[i]);
      if (prior !== undefined && rng.chance(0.8)) {
        out.push(0xc0 | (prior >> 8), prior & 0xff);
        return;
      }
      if (out.length < 0x3fff && prior === undefined) suffixes.set(name.keys[i], out.length);
      out.push(name.labels[i].length, ...name.labels[i]);
    }
    out.push(0);
  };
  const ROOT = poolName([]);
  const u16 = (v: number) => out.push(v >> 8, v & 0xff);
  const name = () => rng.pick(labels);

  const qd = rng.chance(0.9) ? 1 : rng.int(3);
  const counts = [rng.int(8), rng.int(3), rng.int(4)];
  u16(rng.u32() & 0xffff);
  u16(rng.chance(0.85) ? 0x8180 : rng.chance(0.5) ? 0x8183 : rng.u32() & 0xffff);
  u16(qd);
  for (const c of counts) u16(c);
  for (let i = 0; i < qd; i++) {
    writeName(name());
    u16(rng.pick([1, 28, 65, 5]));
    u16(1);
  }
  const total = counts[0] + counts[1] + counts[2];
  for (let i = 0; i < total; i++) {
    const type = rng.pick([1, 1, 1, 28, 28, 5, 2, 33, 257, 15, 16, 65, 64, 41, 99, 12]);
    writeName(type === 41 ? ROOT : name());
    u16(type);
    u16(rng.chance(0.95) ? 1 : rng.int(5));
    out.push(...rng.bytes(4));
    const lenAt = out.length;
    u16(0);
    const start = out.length;
    if (type === 1) {
      out.push(
        ...(rng.chance(0.97) ? [198, 18, rng.int(256), rng.int(256)] : rng.bytes(rng.int(7))),
      );
    } else if (type === 28) out.push(...rng.bytes(rng.chance(0.97) ? 16 : rng.int(20)));
    else if (type === 5 || type === 2 || type === 12) writeName(name());
    else if (type === 33) {
      out.push(...rng.bytes(6));
      writeName(name());
    } else if (type === 15) {
      u16(rng.int(100));
      writeName(name());
    } else if (type === 257) out.push(0, 5, ...enc("issue"), ...rng.bytes(rng.int(30)));
    else if (type === 16) out.push(3, ...enc("pq1"), ...rng.bytes(rng.int(20)));
    else if (type === 65 || type === 64) {
      u16(rng.int(3));
      const target = rng.chance(0.5) ? [] : name().labels;
      for (const l of target) out.push(l.length, ...l);
      out.push(0);
      let key = 0;
      for (let p = rng.int(5); p > 0; p--) {
        key += 1 + rng.int(3);
        if (rng.chance(0.03)) key -= 2; // out of order now and then
        const len = key === 4
          ? 4 * (1 + rng.int(3))
          : key === 6
          ? 16 * (1 + rng.int(2))
          : rng.int(9);
        u16(key & 0xffff);
        u16(rng.chance(0.97) ? len : rng.int(40));
        out.push(...rng.bytes(len));
      }
    } else out.push(...rng.bytes(rng.int(24)));
    const len = out.length - start;
    out[lenAt] = len >> 8;
    out[lenAt + 1] = len & 0xff;
  }
  if (rng.chance(0.05)) out.push(...rng.bytes(rng.int(8))); // trailing bytes
  const m = new Uint8Array(out.length > 65_000 ? out.slice(0, 65_000) : out);
  // Damage: bit flips, truncation, a count off by one.
  if (rng.chance(0.15)) m[rng.int(m.length)] ^= 1 << rng.int(8);
  if (rng.chance(0.05)) m[5 + 2 * rng.int(4)] += 1;
  if (rng.chance(0.05)) return m.subarray(0, rng.int(m.length));
  return m;
}

/** The names the generator draws from: announcements in several spellings, hostile labels. */
function namePool(rng: Rng): PoolName[] {
  const pool: number[][][] = [];
  const lab = enc("lab"), test = enc("test");
  for (let k = 0; k < 24; k++) {
    const hash = new Uint8Array(rng.bytes(32));
    let label = formatPq1Label(hash, k % 2 ? { crypto: 42424, key: 42425 } : undefined);
    if (k % 3 === 0) label = label.toUpperCase();
    pool.push([enc(label), lab, test]);
    pool.push([enc("www"), enc(label), lab, test]);
  }
  pool.push([enc("pq1"), lab, test]); // too short: not an announcement
  pool.push(CANARY_NAME.split(".").map(enc));
  pool.push([enc("plain"), lab, test], [enc("www"), lab, test]);
  for (let k = 0; k < 24; k++) {
    // labels with newlines, ESC, dots, bytes that are not UTF-8, 63-byte labels
    const n = 1 + rng.int(3);
    const name: number[][] = [];
    for (let i = 0; i < n; i++) {
      const len = rng.chance(0.2) ? 63 : 1 + rng.int(20);
      name.push(
        rng.bytes(len).map((b) => rng.chance(0.3) ? rng.pick([10, 27, 46, 0xff, 0xc3]) : b),
      );
    }
    pool.push(name);
  }
  return pool.map(poolName);
}

function editableRanges(
  msg: ReturnType<typeof readStrictMessage> & object,
  announced: (r: StrictRecord) => boolean,
): [number, number][] {
  const ranges: [number, number][] = [];
  const canary = msg.questions.length === 1 && presentName(msg.questions[0].name) === CANARY_NAME;
  for (const r of msg.records) {
    if (r.klass !== 1 || ![1, 28, 64, 65].includes(r.type)) continue;
    if (announced(r) || (canary && r.section === "answer" && r.type !== 64)) {
      ranges.push([r.typeAt, r.typeAt + 2], [r.ttlAt, r.ttlAt + 4], [
        r.rdataAt,
        r.rdataAt + r.rdlength,
      ]);
    }
  }
  if (canary) ranges.push([3, 4]);
  return ranges;
}

Deno.test(`DNS editor: byte identity outside edited fields over ${COUNT} fuzzed answers`, () => {
  const rng = new Rng(SEED);
  const pool = namePool(rng);
  let next = 2;
  const rw = new DnsRewriter({
    parseName: parsePq1Name,
    // Now and then no address is given: the record must then be neutralised, not passed.
    assign: () => rng.chance(0.05) ? null : (0x0a2b0000 | (next++ & 0xffff)) >>> 0,
  });
  const tally = { strictRejected: 0, edited: 0, aRewritten: 0, neutralised: 0, canary: 0 };
  const t0 = performance.now();
  for (let i = 0; i < COUNT; i++) {
    const dns = randomMessage(rng, pool);
    const packet = udpPacket("198.18.0.53", "198.18.0.2", 53, 40000, dns);
    const r = rw.process(packet);
    const out = r.action === "rewrite" ? checkUdpPacket(r.packet) : dns;
    const where = `seed ${SEED} answer ${i}`;
    assert.equal(out.length, dns.length, where);
    const strict = readStrictMessage(dns);
    if (strict === null) {
      tally.strictRejected++;
      assert.equal(r.action, "pass", `${where}: a message that does not frame was edited`);
      continue;
    }
    const names = new Map<StrictRecord, boolean>();
    const announced = (rec: StrictRecord) => {
      let yes = names.get(rec);
      if (yes === undefined) names.set(rec, yes = parsePq1Name(presentName(rec.owner)) !== null);
      return yes;
    };
    const allowed = new Uint8Array(dns.length);
    for (const [a, b] of editableRanges(strict, announced)) allowed.fill(1, a, b);
    for (let k = 0; k < dns.length; k++) {
      if (!allowed[k] && out[k] !== dns[k]) {
        assert.fail(`${where}: byte ${k} changed ${dns[k]} -> ${out[k]}`);
      }
    }
    if (r.action === "rewrite") tally.edited++;
    // What must change did: announced A records (IN, 4 bytes, outside the subnet).
    const word = (o: number) => out[o] * 256 + out[o + 1];
    const flagsOk = (strict.flags & 0x8000) !== 0 && (strict.flags & 0x7800) === 0;
    const canary = flagsOk && strict.questions.length === 1 &&
      presentName(strict.questions[0].name) === CANARY_NAME;
    if (canary) {
      tally.canary++;
      assert.equal(out[3] & 0x0f, 3, `${where}: canary not NXDOMAIN`);
      continue;
    }
    if (!flagsOk || (strict.flags & 0x000f) !== 0) continue;
    for (const rec of strict.records) {
      if (rec.klass !== 1 || !announced(rec)) continue;
      const neutral = word(rec.typeAt) === NEUTRAL_TYPE;
      if (neutral) tally.neutralised++;
      if (rec.type === 28) assert.ok(neutral, `${where}: AAAA of an announced name kept`);
      if (rec.type !== 1) continue;
      const before = dns.slice(rec.rdataAt, rec.rdataAt + 4);
      const addr = ((before[0] << 24) | (before[1] << 16) | (before[2] << 8) | before[3]) >>> 0;
      if (rec.rdlength === 4 && inSubnet(addr, SUBNET)) continue;
      if (neutral) continue;
      const a = rec.rdataAt;
      const now = ((out[a] << 24) | (out[a + 1] << 16) | (out[a + 2] << 8) | out[a + 3]) >>> 0;
      assert.ok(rec.rdlength === 4 && inSubnet(now, SUBNET), `${where}: A record not rewritten`);
      assert.equal(word(rec.ttlAt) + word(rec.ttlAt + 2), 0, `${where}: TTL not 0`);
      tally.aRewritten++;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  console.log(
    `FIGURES dns fuzz: ${COUNT} answers (seed ${SEED}) in ${seconds.toFixed(1)} s: ` +
      `${tally.edited} edited, ${tally.aRewritten} A records rewritten, ${tally.neutralised} ` +
      `records neutralised, ${tally.canary} canary answers, ${tally.strictRejected} rejected by ` +
      `the strict reader; 0 bytes changed outside the edited fields`,
  );
  // The generator must actually reach the interesting cases.
  assert.ok(tally.aRewritten > COUNT / 10 && tally.canary > 0 && tally.strictRejected > 0);
});
