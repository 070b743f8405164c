// Splitting the kernel's large segments into MTU-sized packets and joining them again
// (lib/core/offload.ts), checked against an independent checksum and field reader.

import assert from "node:assert/strict";
import {
  GSO_NONE,
  GSO_TCPV4,
  GSO_UDP_L4,
  splitFrame,
  TcpCoalescer,
  VNET_F_NEEDS_CSUM,
  VNET_HDR_BYTES,
} from "../lib/core/offload.ts";
import { translate, translateOffloaded } from "../lib/core/nat.ts";

// Reference checksum: DataView reads, folding after every addition.
function sum16(bytes: Uint8Array, initial = 0): number {
  const padded = new Uint8Array(bytes.length + (bytes.length & 1));
  padded.set(bytes);
  const v = new DataView(padded.buffer);
  let s = initial;
  for (let i = 0; i < padded.length; i += 2) {
    s += v.getUint16(i);
    s = (s & 0xffff) + (s >>> 16);
  }
  return s;
}

function pseudo(p: Uint8Array, proto: number, l4Length: number): number {
  const v = new DataView(p.buffer, p.byteOffset);
  return sum16(
    new Uint8Array(0),
    v.getUint16(12) + v.getUint16(14) + v.getUint16(16) +
      v.getUint16(18) + proto + l4Length,
  );
}

function l4Valid(p: Uint8Array): boolean {
  const hl = (p[0] & 15) * 4;
  const total = new DataView(p.buffer, p.byteOffset).getUint16(2);
  return sum16(p.subarray(hl, total), pseudo(p, p[9], total - hl)) === 0xffff;
}

function ipValid(p: Uint8Array): boolean {
  return sum16(p.subarray(0, (p[0] & 15) * 4)) === 0xffff;
}

const dv = (p: Uint8Array) => new DataView(p.buffer, p.byteOffset, p.byteLength);

/** An IPv4/TCP packet with a timestamp option and `payload` bytes of counting data. */
function tcpPacket(payload: number, seq: number, flags = 0x18, id = 0x1234): Uint8Array {
  const hl = 20;
  const thl = 32;
  const p = new Uint8Array(hl + thl + payload);
  const v = dv(p);
  p[0] = 0x45;
  v.setUint16(2, p.length);
  v.setUint16(4, id);
  v.setUint16(6, 0x4000); // DF
  p[8] = 64;
  p[9] = 6;
  v.setUint32(12, 0x0a2a0001);
  v.setUint32(16, 0x0a2b0002);
  v.setUint16(20, 5201);
  v.setUint16(22, 40000);
  v.setUint32(24, seq);
  v.setUint32(28, 0x01020304); // ack
  p[32] = (thl / 4) << 4;
  p[33] = flags;
  v.setUint16(34, 500); // window
  p.set([1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9], 40); // NOP NOP timestamps
  for (let i = 0; i < payload; i++) p[hl + thl + i] = (seq + i) & 0xff;
  return p;
}

function withChecksums(p: Uint8Array): Uint8Array {
  const v = dv(p);
  const hl = (p[0] & 15) * 4;
  const at = hl + (p[9] === 6 ? 16 : 6);
  v.setUint16(at, 0);
  v.setUint16(at, ~sum16(p.subarray(hl), pseudo(p, p[9], p.length - hl)) & 0xffff);
  v.setUint16(10, 0);
  v.setUint16(10, ~sum16(p.subarray(0, hl)) & 0xffff);
  return p;
}

/** A frame as the kernel hands it: header, packet with a partial (pseudo-header) checksum. */
function gsoFrame(p: Uint8Array, gsoType: number, gsoSize: number): Uint8Array {
  const f = new Uint8Array(VNET_HDR_BYTES + p.length);
  const v = dv(f);
  f[0] = VNET_F_NEEDS_CSUM;
  f[1] = gsoType;
  const hl = (p[0] & 15) * 4;
  const l4 = p[9] === 6 ? (p[hl + 12] >> 4) * 4 : 8;
  v.setUint16(2, hl + l4, true);
  v.setUint16(4, gsoSize, true);
  v.setUint16(6, hl, true);
  v.setUint16(8, p[9] === 6 ? 16 : 6, true);
  f.set(p, VNET_HDR_BYTES);
  dv(f.subarray(VNET_HDR_BYTES)).setUint16(
    hl + (p[9] === 6 ? 16 : 6),
    pseudo(p, p[9], p.length - hl),
  );
  return f;
}

Deno.test("a TSO segment is cut into MTU-sized packets with their own ids, seqs, flags, checksums", () => {
  const seq = 0xfffff000; // wraps inside the segment
  const big = tcpPacket(10000, seq, 0x18 | 0x01 | 0x80); // PSH FIN CWR
  const original = big.slice();
  const out: Uint8Array[] = [];
  const r = splitFrame(gsoFrame(big, GSO_TCPV4, 1348), (p) => out.push(p.slice()));
  assert.deepEqual(r, { ok: true, packets: 8 });
  let data: number[] = [];
  out.forEach((p, i) => {
    const v = dv(p);
    assert.equal(v.getUint16(2), p.length);
    assert.ok(p.length <= 52 + 1348);
    assert.equal(v.getUint16(4), 0x1234 + i);
    assert.equal(v.getUint32(24), (seq + i * 1348) >>> 0);
    assert.ok(ipValid(p), `IP checksum of packet ${i}`);
    assert.ok(l4Valid(p), `TCP checksum of packet ${i}`);
    const last = i === out.length - 1;
    assert.equal(p[33] & 0x09, last ? 0x09 : 0, `PSH/FIN only on the last (${i})`);
    assert.equal(p[33] & 0x80, i === 0 ? 0x80 : 0, `CWR only on the first (${i})`);
    assert.deepEqual(p.subarray(20, 24), original.subarray(20, 24));
    assert.deepEqual(p.subarray(28, 33), original.subarray(28, 33));
    assert.deepEqual(
      p.subarray(34, 52),
      original.subarray(34, 52).map((b, k) => k < 2 ? b : p[34 + k]),
    );
    data = data.concat([...p.subarray(52)]);
  });
  assert.deepEqual(new Uint8Array(data), original.subarray(52));
});

Deno.test("a USO segment is cut into UDP datagrams with their own lengths and checksums", () => {
  const payload = 3000;
  const p = new Uint8Array(28 + payload);
  const v = dv(p);
  p[0] = 0x45;
  v.setUint16(2, p.length);
  p[8] = 64;
  p[9] = 17;
  v.setUint32(12, 0x0a2a0001);
  v.setUint32(16, 0x0a2b0002);
  v.setUint16(20, 443);
  v.setUint16(22, 5555);
  v.setUint16(24, p.length - 20);
  for (let i = 0; i < payload; i++) p[28 + i] = i & 0xff;
  const out: Uint8Array[] = [];
  const r = splitFrame(gsoFrame(p, GSO_UDP_L4, 1200), (x) => out.push(x.slice()));
  assert.deepEqual(r, { ok: true, packets: 3 });
  assert.deepEqual(out.map((x) => dv(x).getUint16(24)), [1208, 1208, 608]);
  for (const x of out) assert.ok(ipValid(x) && l4Valid(x));
});

Deno.test("a packet with a partial checksum gets it completed; malformed frames are refused", () => {
  const p = tcpPacket(100, 5, 0x10);
  const f = gsoFrame(p, GSO_NONE, 0);
  const out: Uint8Array[] = [];
  assert.deepEqual(splitFrame(f, (x) => out.push(x.slice())), { ok: true, packets: 1 });
  assert.ok(l4Valid(out[0]));
  const reasons = [
    new Uint8Array(5),
    (() => {
      const g = gsoFrame(tcpPacket(3000, 1), GSO_TCPV4, 0);
      return g;
    })(),
    (() => {
      const g = gsoFrame(tcpPacket(3000, 1), GSO_TCPV4, 1000);
      g[VNET_HDR_BYTES + 9] = 17; // says TCP, carries UDP
      return g;
    })(),
    gsoFrame(tcpPacket(3000, 1), 4, /* TCPv6 */ 1000),
    gsoFrame(tcpPacket(3000, 1), GSO_TCPV4, 1000).subarray(0, VNET_HDR_BYTES + 30),
  ].map((g) => splitFrame(g, () => assert.fail("nothing may come out")));
  for (const r of reasons) assert.equal(r.ok, false);
});

/** What the kernel does with a coalesced frame: finish the checksum, then cut it (as TSO). */
function kernelView(frame: Uint8Array) {
  const v = dv(frame);
  return {
    flags: frame[0],
    gsoType: frame[1],
    hdrLen: v.getUint16(2, true),
    gsoSize: v.getUint16(4, true),
    csumStart: v.getUint16(6, true),
    csumOffset: v.getUint16(8, true),
    packet: frame.slice(VNET_HDR_BYTES),
  };
}

Deno.test("in-order segments of one flow are joined into one frame; others stay in order", () => {
  const mss = 1000;
  const segs = [0, 1, 2, 3].map((i) => withChecksums(tcpPacket(mss, 7000 + i * mss, 0x10)));
  segs.push(withChecksums(tcpPacket(400, 7000 + 4 * mss, 0x18))); // shorter, PSH: the run ends
  const other = withChecksums(tcpPacket(mss, 90000, 0x10)); // out of order for the same flow
  const frames: Uint8Array[] = [];
  const c = new TcpCoalescer((f) => frames.push(f.slice()));
  for (const s of segs) c.push(s);
  c.push(other);
  c.flush();
  assert.equal(frames.length, 2);
  const k = kernelView(frames[0]);
  assert.equal(k.flags, VNET_F_NEEDS_CSUM);
  assert.equal(k.gsoType, GSO_TCPV4);
  assert.equal(k.gsoSize, mss);
  assert.equal(k.hdrLen, 52);
  assert.equal(k.csumStart, 20);
  assert.equal(k.csumOffset, 16);
  const p = k.packet;
  assert.equal(dv(p).getUint16(2), p.length);
  assert.equal(p.length, 52 + 4 * mss + 400);
  assert.ok(ipValid(p));
  assert.equal(dv(p).getUint32(24), 7000);
  assert.equal(p[33], 0x18); // the last one's PSH
  // The partial checksum: summing from csum_start to the end completes it.
  const c2 = ~sum16(p.subarray(20)) & 0xffff;
  dv(p).setUint16(36, c2);
  assert.ok(l4Valid(p));
  const expected = segs.map((s) => [...s.subarray(52)]).flat();
  assert.deepEqual([...p.subarray(52)], expected);
  // The out-of-order segment comes out alone, unchanged, behind the run.
  const k2 = kernelView(frames[1]);
  assert.equal(k2.gsoType, GSO_NONE);
  assert.equal(k2.flags, 0);
  assert.deepEqual(k2.packet, other);
  assert.equal(c.stats.coalescedSegments, 5);
});

Deno.test("control segments and other protocols flush what waits, so a flow stays in order", () => {
  const frames: Uint8Array[] = [];
  const c = new TcpCoalescer((f) => frames.push(f.slice()));
  const a = withChecksums(tcpPacket(500, 1, 0x10));
  const b = withChecksums(tcpPacket(500, 501, 0x10));
  const fin = withChecksums(tcpPacket(0, 1001, 0x11));
  c.push(a);
  c.push(b);
  c.push(fin);
  c.flush();
  assert.equal(frames.length, 2);
  assert.equal(kernelView(frames[0]).packet.length, 52 + 1000);
  assert.deepEqual(kernelView(frames[1]).packet, fin);
});

Deno.test("translateOffloaded leaves TCP's checksum for the kernel; finished, it is translate's", () => {
  const src = 0x0a2c0005;
  const dst = 0xc6120002;
  // A checksum that does not match the addresses (the reference blanks the destination).
  const inner = withChecksums(tcpPacket(1300, 4242, 0x10));
  dv(inner).setUint32(16, 0);
  const full = inner.slice();
  assert.equal(translate(full, src, dst), true);
  assert.ok(l4Valid(full) && ipValid(full));
  const partial = inner.slice();
  assert.equal(translateOffloaded(partial, src, dst), "partial");
  assert.ok(ipValid(partial));
  const hl = 20;
  assert.equal(dv(partial).getUint16(hl + 16), pseudo(partial, 6, partial.length - hl));
  // What the kernel does with NEEDS_CSUM: sum from csum_start to the end, complement.
  dv(partial).setUint16(hl + 16, ~sum16(partial.subarray(hl)) & 0xffff);
  assert.deepEqual(partial, full);
  // UDP, other protocols and anything not IPv4 go as translate() takes them.
  const udp = withChecksums(tcpPacket(100, 1));
  udp[9] = 17;
  withChecksums(udp);
  const udpFull = udp.slice();
  translate(udpFull, src, dst);
  assert.equal(translateOffloaded(udp, src, dst), "complete");
  assert.deepEqual(udp, udpFull);
  assert.equal(translateOffloaded(new Uint8Array(10), src, dst), null);
});

Deno.test("a lone segment with a partial checksum is written with NEEDS_CSUM for the kernel", () => {
  const frames: Uint8Array[] = [];
  const c = new TcpCoalescer((f) => frames.push(f.slice()));
  const p = withChecksums(tcpPacket(700, 1, 0x18));
  const sum = dv(p).getUint16(36);
  dv(p).setUint16(36, pseudo(p, 6, p.length - 20));
  c.push(p, true); // PSH: closes its run at once
  const ack = withChecksums(tcpPacket(0, 701, 0x10)); // no payload: never joins
  c.push(ack);
  c.flush();
  assert.equal(frames.length, 2);
  const k = kernelView(frames[0]);
  assert.equal(k.flags, VNET_F_NEEDS_CSUM);
  assert.equal(k.gsoType, GSO_NONE);
  assert.equal(k.csumStart, 20);
  assert.equal(k.csumOffset, 16);
  dv(k.packet).setUint16(36, ~sum16(k.packet.subarray(20)) & 0xffff);
  assert.equal(dv(k.packet).getUint16(36), sum);
  assert.ok(l4Valid(k.packet));
  const k2 = kernelView(frames[1]);
  assert.equal(k2.flags, 0);
  assert.deepEqual(k2.packet, ack);
});

Deno.test("a connection's segments leave in order when its headers change within a batch", () => {
  // The timestamp option ticks after two segments, and the fourth carries PSH: each run must
  // be written before anything that came after it.
  const mss = 1000;
  const segs = [0, 1, 2, 3, 4].map((i) => {
    const p = tcpPacket(mss, 5000 + i * mss, i === 3 ? 0x18 : 0x10);
    if (i >= 2) p[47] = 8; // TSval 7 -> 8
    return withChecksums(p);
  });
  const frames: Uint8Array[] = [];
  const c = new TcpCoalescer((f) => frames.push(f.slice()));
  for (const s of segs) c.push(s);
  c.flush();
  let next = 5000;
  for (const f of frames) {
    const p = kernelView(f).packet;
    assert.equal(dv(p).getUint32(24), next, "in sequence order");
    next += p.length - 52;
  }
  assert.equal(next, 5000 + 5 * mss);
  assert.equal(frames.length, 3); // TSval 7: 2 segments; TSval 8: 2 up to PSH; then the last
});
