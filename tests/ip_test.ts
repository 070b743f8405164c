import assert from "node:assert/strict";
import {
  checksumAdjust16,
  inSubnet,
  internetChecksum,
  ipv4HeaderChecksumOk,
  ipv4HeaderLength,
  ipv4ToNumber,
  numberToIpv4,
  onesComplementSum,
  parseIpv4Address,
  parseIpv4Header,
  parseSubnet,
  PROTO_ICMP,
  PROTO_TCP,
  PROTO_UDP,
  subnetAddress,
  subnetBroadcast,
  subnetSize,
} from "../lib/core/ip.ts";
import { rewriteAddresses } from "../lib/core/nat.ts";

// ---------------------------------------------------------------- independent reference code
// Deliberately written differently from lib/core/ip.ts and nat.ts: DataView reads, a fold after every add.

function refSum(chunks: Uint8Array[]): number {
  let sum = 0;
  for (const c of chunks) {
    const padded = new Uint8Array(c.length + (c.length & 1));
    padded.set(c);
    const v = new DataView(padded.buffer);
    for (let i = 0; i < padded.length; i += 2) {
      sum += v.getUint16(i);
      if (sum > 0xffff) sum -= 0xffff;
    }
  }
  return sum;
}

function pseudo(src: Uint8Array, dst: Uint8Array, proto: number, len: number): Uint8Array {
  const p = new Uint8Array(12);
  p.set(src, 0);
  p.set(dst, 4);
  p[9] = proto;
  p[10] = len >> 8;
  p[11] = len & 0xff;
  return p;
}

/** Full L4 checksum check over a whole (unfragmented) datagram. */
function l4Valid(pkt: Uint8Array): boolean {
  const hl = (pkt[0] & 15) * 4;
  const total = (pkt[2] << 8) | pkt[3];
  const l4 = pkt.subarray(hl, total);
  const ph = pseudo(pkt.subarray(12, 16), pkt.subarray(16, 20), pkt[9], l4.length);
  return refSum([ph, l4]) === 0xffff;
}

function ipHeaderValid(pkt: Uint8Array): boolean {
  return refSum([pkt.subarray(0, (pkt[0] & 15) * 4)]) === 0xffff;
}

function icmpValid(pkt: Uint8Array): boolean {
  const hl = (pkt[0] & 15) * 4;
  return refSum([pkt.subarray(hl, (pkt[2] << 8) | pkt[3])]) === 0xffff;
}

// ---------------------------------------------------------------- packet builders

function rand(n: number): Uint8Array {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b;
}

function addr(s: string): Uint8Array {
  return new Uint8Array(s.split(".").map(Number));
}

interface Build {
  proto: number;
  src: string;
  dst: string;
  payload: Uint8Array;
  options?: Uint8Array;
  udpZeroChecksum?: boolean;
}

/** A valid IPv4 packet with TCP/UDP/ICMP header, checksums from the reference code. */
function build(b: Build): Uint8Array {
  const opts = b.options ?? new Uint8Array(0);
  const hl = 20 + opts.length;
  const l4hl = b.proto === PROTO_TCP ? 20 : 8;
  const total = hl + l4hl + b.payload.length;
  const p = new Uint8Array(total);
  p[0] = 0x40 | (hl / 4);
  p[2] = total >> 8;
  p[3] = total & 0xff;
  p[4] = 0x12;
  p[5] = 0x34;
  p[6] = 0x40; // DF
  p[8] = 64;
  p[9] = b.proto;
  p.set(addr(b.src), 12);
  p.set(addr(b.dst), 16);
  p.set(opts, 20);
  const l4 = p.subarray(hl);
  if (b.proto === PROTO_TCP) {
    l4.set([0x9c, 0x40, 0x00, 0x50, 1, 2, 3, 4, 5, 6, 7, 8, 0x50, 0x18, 0xff, 0xff]);
  } else if (b.proto === PROTO_UDP) {
    l4.set([0xa5, 0xb7, 0x00, 0x35, (8 + b.payload.length) >> 8, (8 + b.payload.length) & 0xff]);
  } else {
    l4.set([8, 0, 0, 0, 0x11, 0x22, 0, 1]); // echo request
  }
  l4.set(b.payload, l4hl);
  const csOff = b.proto === PROTO_TCP ? 16 : b.proto === PROTO_UDP ? 6 : 2;
  if (!(b.proto === PROTO_UDP && b.udpZeroChecksum)) {
    const parts = b.proto === PROTO_ICMP
      ? [l4]
      : [pseudo(p.subarray(12, 16), p.subarray(16, 20), b.proto, l4.length), l4];
    let c = ~refSum(parts) & 0xffff;
    if (c === 0 && b.proto === PROTO_UDP) c = 0xffff;
    l4[csOff] = c >> 8;
    l4[csOff + 1] = c & 0xff;
  }
  const hc = ~refSum([p.subarray(0, hl)]) & 0xffff;
  p[10] = hc >> 8;
  p[11] = hc & 0xff;
  return p;
}

/** Splits a datagram into IPv4 fragments of at most `fragPayload` bytes (multiple of 8). */
function fragment(pkt: Uint8Array, fragPayload: number): Uint8Array[] {
  const hl = (pkt[0] & 15) * 4;
  const data = pkt.subarray(hl);
  const out: Uint8Array[] = [];
  for (let off = 0; off < data.length; off += fragPayload) {
    const chunk = data.subarray(off, Math.min(off + fragPayload, data.length));
    const f = new Uint8Array(hl + chunk.length);
    f.set(pkt.subarray(0, hl));
    f.set(chunk, hl);
    f[2] = f.length >> 8;
    f[3] = f.length & 0xff;
    const more = off + fragPayload < data.length ? 0x2000 : 0;
    const fo = more | (off / 8);
    f[6] = fo >> 8;
    f[7] = fo & 0xff;
    f[10] = f[11] = 0;
    const hc = ~refSum([f.subarray(0, hl)]) & 0xffff;
    f[10] = hc >> 8;
    f[11] = hc & 0xff;
    out.push(f);
  }
  return out;
}

function reassemble(frags: Uint8Array[]): Uint8Array {
  const hl = (frags[0][0] & 15) * 4;
  const len = frags.reduce((n, f) => n + f.length - hl, hl);
  const p = new Uint8Array(len);
  p.set(frags[0].subarray(0, hl));
  p[2] = len >> 8;
  p[3] = len & 0xff;
  for (const f of frags) {
    const off = (((f[6] << 8) | f[7]) & 0x1fff) * 8;
    p.set(f.subarray(hl), hl + off);
  }
  return p;
}

const NEW_SRC = ipv4ToNumber("10.42.0.7");
const NEW_DST = ipv4ToNumber("192.168.77.1");

// ---------------------------------------------------------------- tests

Deno.test("internet checksum: RFC 1071 example and a textbook IPv4 header", () => {
  const rfc = new Uint8Array([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  assert.equal(internetChecksum(rfc), ~0xddf2 & 0xffff);
  // 192.168.0.1 -> 192.168.0.199, checksum field b861
  // deno-fmt-ignore
  const hdr = new Uint8Array([
    0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61,
    0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
  ]);
  assert.ok(ipv4HeaderChecksumOk(hdr));
  const zeroed = hdr.slice();
  zeroed[10] = zeroed[11] = 0;
  assert.equal(internetChecksum(zeroed), 0xb861);
  // odd length: trailing byte padded with zero
  assert.equal(internetChecksum(new Uint8Array([0x12, 0x34, 0x56])), ~(0x1234 + 0x5600) & 0xffff);
});

Deno.test("internet checksum agrees with the reference over random buffers", () => {
  for (let i = 0; i < 500; i++) {
    const b = rand(1 + Math.floor(Math.random() * 1600));
    assert.equal(internetChecksum(b), ~refSum([b]) & 0xffff);
  }
});

Deno.test("RFC 1624 incremental update matches recomputation", () => {
  for (let i = 0; i < 2000; i++) {
    const b = rand(2 * (2 + Math.floor(Math.random() * 30)));
    const c = internetChecksum(b);
    const w = 2 * Math.floor(Math.random() * (b.length / 2));
    const old = (b[w] << 8) | b[w + 1];
    const neu = Math.random() < 0.1 ? 0 : Math.floor(Math.random() * 0x10000);
    b[w] = neu >> 8;
    b[w + 1] = neu & 0xff;
    // ones' complement has two zeros; compare as values of the sum, not bit patterns
    const fresh = internetChecksum(b);
    const inc = checksumAdjust16(c, old, neu);
    assert.ok(inc === fresh || (inc ^ fresh) === 0xffff && (inc === 0 || fresh === 0));
    assert.equal(refSum([b, new Uint8Array([inc >> 8, inc & 0xff])]), 0xffff);
  }
});

Deno.test("parseIpv4Header reads every field", () => {
  const p = build({ proto: PROTO_UDP, src: "198.18.0.1", dst: "198.18.0.2", payload: rand(5) });
  const h = parseIpv4Header(p);
  assert.ok(h);
  assert.equal(h.headerLength, 20);
  assert.equal(h.totalLength, p.length);
  assert.equal(h.protocol, PROTO_UDP);
  assert.equal(numberToIpv4(h.src), "198.18.0.1");
  assert.equal(numberToIpv4(h.dst), "198.18.0.2");
  assert.equal(h.id, 0x1234);
  assert.equal(h.dontFragment, true);
  assert.equal(h.moreFragments, false);
  assert.equal(h.fragmentOffset, 0);
  assert.equal(h.ttl, 64);
  // trailing link-layer padding is allowed
  const padded = new Uint8Array(p.length + 6);
  padded.set(p);
  assert.equal(parseIpv4Header(padded)?.totalLength, p.length);
});

Deno.test("malformed IPv4 is rejected and never rewritten", () => {
  const good = build({ proto: PROTO_TCP, src: "1.2.3.4", dst: "5.6.7.8", payload: rand(10) });
  const bad: Array<[string, Uint8Array]> = [
    ["empty", new Uint8Array(0)],
    ["19 bytes", good.slice(0, 19)],
    ["version 6", Object.assign(good.slice(), { 0: 0x65 })],
    ["IHL 4", Object.assign(good.slice(), { 0: 0x44 })],
    ["IHL beyond buffer", Object.assign(good.slice(0, 40), { 0: 0x4f, 2: 0, 3: 40 })],
    ["total < IHL", Object.assign(good.slice(), { 2: 0, 3: 19 })],
    ["total > buffer", good.slice(0, good.length - 1)],
  ];
  for (const [what, p] of bad) {
    assert.equal(parseIpv4Header(p), null, what);
    assert.equal(ipv4HeaderLength(p), 0, what);
    const before = p.slice();
    assert.equal(rewriteAddresses(p, NEW_SRC, NEW_DST), false, what);
    assert.deepEqual(p, before, what);
  }
});

Deno.test("rewrite TCP: addresses, IP and TCP checksums", () => {
  for (let i = 0; i < 300; i++) {
    const p = build({
      proto: PROTO_TCP,
      src: "198.18.0.2",
      dst: "10.43.0.9",
      payload: rand(Math.floor(Math.random() * 1400)),
      options: i % 3 === 0 ? new Uint8Array([1, 1, 1, 0]) : undefined, // NOPs, EOL
    });
    assert.ok(l4Valid(p) && ipHeaderValid(p));
    const s = rand(4), d = rand(4);
    const ns = ((s[0] << 24) | (s[1] << 16) | (s[2] << 8) | s[3]) >>> 0;
    const nd = ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) >>> 0;
    const payloadBefore = p.slice(20 + (i % 3 === 0 ? 4 : 0) + 20);
    assert.equal(rewriteAddresses(p, ns, nd), true);
    assert.deepEqual(p.subarray(12, 16), s);
    assert.deepEqual(p.subarray(16, 20), d);
    assert.ok(ipHeaderValid(p), "IP header checksum");
    assert.ok(l4Valid(p), "TCP checksum");
    assert.deepEqual(p.slice(20 + (i % 3 === 0 ? 4 : 0) + 20), payloadBefore);
  }
});

Deno.test("rewrite UDP: checksum updated; a zero checksum stays zero", () => {
  for (let i = 0; i < 300; i++) {
    const p = build({
      proto: PROTO_UDP,
      src: "10.42.0.5",
      dst: "198.18.0.1",
      payload: rand(Math.floor(Math.random() * 600)),
    });
    assert.equal(rewriteAddresses(p, NEW_SRC, NEW_DST), true);
    assert.equal(numberToIpv4(parseIpv4Header(p)!.src), "10.42.0.7");
    assert.ok(ipHeaderValid(p));
    assert.ok(l4Valid(p));
    assert.notEqual((p[26] << 8) | p[27], 0);
  }
  const z = build({
    proto: PROTO_UDP,
    src: "10.42.0.5",
    dst: "198.18.0.1",
    payload: rand(33),
    udpZeroChecksum: true,
  });
  assert.equal(rewriteAddresses(z, NEW_SRC, NEW_DST), true);
  assert.equal((z[26] << 8) | z[27], 0);
  assert.ok(ipHeaderValid(z));
});

Deno.test("rewrite UDP: a result of zero is sent as 0xffff", () => {
  // Choose a payload word so the datagram's checksum with the new addresses computes to 0.
  const p = build({ proto: PROTO_UDP, src: "10.9.8.7", dst: "6.5.4.3", payload: rand(20) });
  const q = p.slice();
  q.set(addr("10.42.0.7"), 12);
  q.set(addr("192.168.77.1"), 16);
  q[26] =
    q[27] =
    q[28] =
    q[29] =
      0; // checksum and the adjustable word
  const s = refSum([
    pseudo(q.subarray(12, 16), q.subarray(16, 20), PROTO_UDP, q.length - 20),
    q.subarray(20),
  ]);
  const w = (0xffff - s) & 0xffff; // makes the sum 0xffff, i.e. checksum ~0xffff = 0
  p[28] = w >> 8;
  p[29] = w & 0xff;
  p[26] = p[27] = 0;
  const orig = ~refSum([
    pseudo(p.subarray(12, 16), p.subarray(16, 20), PROTO_UDP, p.length - 20),
    p.subarray(20),
  ]) & 0xffff;
  p[26] = orig >> 8;
  p[27] = orig & 0xff;
  assert.ok(l4Valid(p));
  assert.equal(rewriteAddresses(p, NEW_SRC, NEW_DST), true);
  assert.equal((p[26] << 8) | p[27], 0xffff);
  assert.ok(l4Valid(p));
});

Deno.test("rewrite ICMP: checksum untouched and still valid", () => {
  const p = build({ proto: PROTO_ICMP, src: "10.43.0.1", dst: "10.43.0.2", payload: rand(56) });
  const icmpBefore = p.slice(20);
  assert.equal(rewriteAddresses(p, NEW_SRC, NEW_DST), true);
  assert.deepEqual(p.slice(20), icmpBefore);
  assert.ok(icmpValid(p));
  assert.ok(ipHeaderValid(p));
  assert.equal(numberToIpv4(parseIpv4Header(p)!.dst), "192.168.77.1");
});

Deno.test("rewrite fragments: first carries the L4 checksum, later ones only the IP header", () => {
  for (const proto of [PROTO_UDP, PROTO_TCP]) {
    const whole = build({ proto, src: "198.18.0.2", dst: "10.43.0.3", payload: rand(3000) });
    whole[6] = 0; // clear DF
    const frags = fragment(whole, 1480);
    assert.equal(frags.length, 3);
    const tails = frags.slice(1).map((f) => f.slice(20));
    for (const f of frags) assert.equal(rewriteAddresses(f, NEW_SRC, NEW_DST), true);
    for (const f of frags) {
      assert.ok(ipHeaderValid(f));
      assert.equal(numberToIpv4(parseIpv4Header(f)!.src), "10.42.0.7");
    }
    frags.slice(1).forEach((f, i) => assert.deepEqual(f.slice(20), tails[i]));
    assert.ok(l4Valid(reassemble(frags)), `reassembled ${proto} datagram checksum`);
  }
});

Deno.test("rewrite refuses a first fragment too short to hold the TCP checksum", () => {
  const whole = build({ proto: PROTO_TCP, src: "1.1.1.1", dst: "2.2.2.2", payload: rand(40) });
  whole[6] = 0;
  const [first] = fragment(whole, 16); // TCP checksum sits at bytes 16-17 of the header
  const before = first.slice();
  assert.equal(rewriteAddresses(first, NEW_SRC, NEW_DST), false);
  assert.deepEqual(first, before);
});

Deno.test("address and subnet helpers", () => {
  assert.equal(ipv4ToNumber("10.43.0.1"), 0x0a2b0001);
  assert.equal(ipv4ToNumber("255.255.255.255"), 0xffffffff);
  assert.equal(numberToIpv4(0xc6120001), "198.18.0.1");
  assert.equal(numberToIpv4(-1), "255.255.255.255");
  for (const bad of ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "a.b.c.d", "1.2.3.-4"]) {
    assert.equal(parseIpv4Address(bad), null, bad);
    assert.throws(() => ipv4ToNumber(bad), TypeError);
  }
  const s = parseSubnet("10.43.7.1/16");
  assert.equal(numberToIpv4(s.network), "10.43.0.0");
  assert.equal(s.prefix, 16);
  assert.equal(subnetSize(s), 65536);
  assert.equal(numberToIpv4(subnetAddress(s, 2)), "10.43.0.2");
  assert.equal(numberToIpv4(subnetBroadcast(s)), "10.43.255.255");
  assert.throws(() => subnetAddress(s, 65536), RangeError);
  assert.ok(inSubnet(ipv4ToNumber("10.43.255.255"), s));
  assert.ok(!inSubnet(ipv4ToNumber("10.44.0.0"), s));
  assert.ok(inSubnet(ipv4ToNumber("8.8.8.8"), parseSubnet("0.0.0.0/0")));
  assert.ok(inSubnet(ipv4ToNumber("1.2.3.4"), parseSubnet("1.2.3.4/32")));
  assert.ok(!inSubnet(ipv4ToNumber("1.2.3.5"), parseSubnet("1.2.3.4/32")));
  assert.throws(() => parseSubnet("10.0.0.0/33"));
  assert.throws(() => parseSubnet("10.0.0.0"));
});

Deno.test("onesComplementSum agrees with a 16-bit reference at every alignment and length", () => {
  const data = crypto.getRandomValues(new Uint8Array(1600));
  data.fill(0xff, 0, 200); // long runs of ones: the folds must carry
  const reference = (p: Uint8Array, start: number, end: number, initial: number) => {
    let s = initial;
    for (let i = start; i < end; i += 2) {
      s += (p[i] << 8) | (i + 1 < end ? p[i + 1] : 0);
      s = (s & 0xffff) + (s >>> 16);
    }
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    return s;
  };
  for (let shift = 0; shift < 4; shift++) {
    const p = data.subarray(shift);
    for (const start of [0, 1, 2, 3, 20, 21]) {
      for (const len of [0, 1, 2, 3, 63, 64, 65, 66, 67, 1399, 1400, 1500]) {
        const end = Math.min(p.length, start + len);
        for (const initial of [0, 0xfffe, 0x12345]) {
          assert.equal(
            onesComplementSum(p, start, end, initial),
            reference(p, start, end, initial),
            `shift ${shift} start ${start} len ${len} initial ${initial}`,
          );
        }
      }
    }
  }
});
