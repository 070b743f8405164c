// ffi/udp.ts over 127.0.0.1 with real sockets, in both modes (recvmmsg/sendmmsg and plain). A full
// send queue needs a namespace of its own: tests/ffi_udp_ns_test.ts, in the root-only run.

import assert from "node:assert/strict";
import { type Datagram, UdpSocket } from "../ffi/udp.ts";
import { SysError } from "../ffi/libc.ts";

const LOOPBACK = 0x7f000001;

/** Drains `sock` until `count` datagrams arrived or a wait times out; copies the data out. */
async function receive(sock: UdpSocket, count: number): Promise<Datagram[]> {
  const out: Datagram[] = [];
  while (out.length < count) {
    const batch = sock.recvBatch();
    if (batch.length === 0) {
      if (!(await sock.waitReadable(1000))) break;
      continue;
    }
    for (const d of batch) out.push({ ...d, data: d.data.slice() });
  }
  return out;
}

for (const mode of ["mmsg", "plain"] as const) {
  Deno.test(`${mode}: batches cross in order with their source address`, async () => {
    const a = UdpSocket.bind(LOOPBACK, 0, { mode, batch: 16 });
    const b = UdpSocket.bind(LOOPBACK, 0, { mode, batch: 16 });
    try {
      assert.equal(a.mode, mode);
      assert.ok(a.localPort > 0 && a.localPort !== b.localPort);
      assert.deepEqual(a.localAddress(), { addr: LOOPBACK, port: a.localPort });
      assert.ok(a.bufferSizes.receive > 0 && a.bufferSizes.send > 0);
      // More than one batch's worth, of varied sizes, including the largest IPv4 payload.
      const out: Datagram[] = Array.from({ length: 100 }, (_, i) => ({
        data: new Uint8Array(1 + i * 13).fill(i),
        addr: LOOPBACK,
        port: b.localPort,
      }));
      out.push({ data: new Uint8Array(65507).fill(0xee), addr: LOOPBACK, port: b.localPort });
      assert.equal(a.sendBatch(out), out.length);
      assert.equal(a.stats.sent, out.length);
      const got = await receive(b, out.length);
      assert.equal(got.length, out.length);
      got.forEach((d, i) => {
        assert.deepEqual(d.data, out[i].data, `datagram ${i}`);
        assert.equal(d.addr, LOOPBACK);
        assert.equal(d.port, a.localPort);
      });
      assert.equal(b.stats.received, out.length);

      // And back, one at a time, to a textual address.
      assert.equal(b.sendTo(new Uint8Array([1, 2, 3]), LOOPBACK, a.localPort), true);
      const [reply] = await receive(a, 1);
      assert.deepEqual(reply.data, new Uint8Array([1, 2, 3]));
      assert.equal(reply.port, b.localPort);

      // recvBatch honours its limit and leaves the rest queued.
      a.sendBatch(out.slice(0, 10));
      await b.waitReadable(1000);
      assert.equal(b.recvBatch(4).length, 4);
      // A limit of 0 (the server's full handshake queue) or a fraction reads none.
      assert.equal(b.recvEach(() => {}, 0), 0);
      assert.equal(b.recvEach(() => {}, 0.5), 0);
      assert.equal(b.recvEach(() => {}, 1.5), 1);
      assert.equal((await receive(b, 5)).length, 5);
      assert.equal(b.recvBatch().length, 0, "nothing left: an empty batch, no exception");
    } finally {
      a.close();
      b.close();
    }
  });

  Deno.test(`${mode}: oversized datagrams are dropped and counted, bad targets refused`, async () => {
    const rx = UdpSocket.bind(LOOPBACK, 0, { mode, maxDatagram: 1500 });
    const tx = UdpSocket.bind(LOOPBACK, 0, { mode, maxDatagram: 1500 });
    try {
      const port = rx.localPort;
      const sent = tx.sendBatch([
        { data: new Uint8Array(1500).fill(1), addr: LOOPBACK, port },
        { data: new Uint8Array(1501).fill(2), addr: LOOPBACK, port }, // larger than a slot
        { data: new Uint8Array(20).fill(3), addr: LOOPBACK, port },
      ]);
      assert.equal(sent, 3, "larger-than-slot datagrams still go out, singly");
      const got = await receive(rx, 2);
      assert.deepEqual(got.map((d) => [d.data.length, d.data[0]]), [[1500, 1], [20, 3]]);
      assert.equal(rx.stats.truncated, 1);

      assert.equal(tx.sendTo(new Uint8Array(4), 2 ** 32, port), false);
      assert.equal(tx.sendTo(new Uint8Array(4), LOOPBACK, 70000), false);
      assert.equal(tx.stats.sendFailures, 2);
      assert.equal(tx.stats.lastErrno, 22);
      // A datagram no IPv4 packet can carry: the kernel refuses it (EMSGSIZE), the rest go.
      const n = tx.sendBatch([
        { data: new Uint8Array(70000), addr: LOOPBACK, port },
        { data: new Uint8Array(8).fill(9), addr: LOOPBACK, port },
      ]);
      assert.equal(n, 1);
      assert.equal(tx.stats.lastErrno, 90);
      assert.deepEqual((await receive(rx, 1))[0].data, new Uint8Array(8).fill(9));
    } finally {
      rx.close();
      tx.close();
    }
  });
}

Deno.test("a flooded receiver loses datagrams quietly", async () => {
  const rx = UdpSocket.bind(LOOPBACK, 0, { bufferBytes: 4096 });
  const tx = UdpSocket.bind(LOOPBACK, 0, { bufferBytes: 4096 });
  try {
    const burst = Array.from({ length: 2000 }, () => ({
      data: new Uint8Array(1200),
      addr: LOOPBACK,
      port: rx.localPort,
    }));
    // Loopback hands datagrams straight to the receiver; its small buffer overflows and the
    // kernel drops the excess there, so the sender sees them all as sent.
    assert.equal(tx.sendBatch(burst), burst.length);
    let got = 0;
    for (let b = rx.recvBatch(); b.length > 0; b = rx.recvBatch()) got += b.length;
    assert.ok(got > 0 && got < burst.length, `received ${got}`);
    assert.equal(await rx.waitReadable(10), false);
  } finally {
    rx.close();
    tx.close();
  }
});

Deno.test("waiting, closing and bind errors", async () => {
  const s = UdpSocket.bind(LOOPBACK, 0);
  assert.equal(await s.waitReadable(20), false, "nothing arrives: timeout");
  assert.equal(await s.waitWritable(1000), true);
  s.close();
  s.close(); // idempotent
  assert.deepEqual(s.recvBatch(), []);
  assert.equal(s.sendTo(new Uint8Array(1), LOOPBACK, 9), false);
  assert.equal(s.sendBatch([{ data: new Uint8Array(1), addr: LOOPBACK, port: 9 }]), 0);
  assert.equal(await s.waitReadable(10), false);
  // 198.18.0.1 is not an address of this host.
  assert.throws(
    () => UdpSocket.bind(0xc6120001, 0),
    (e: unknown) =>
      e instanceof SysError && e.code === 99 && /bind\(198\.18\.0\.1:0\)/.test(e.message),
  );
  assert.throws(() => UdpSocket.bind(LOOPBACK, 65536), RangeError);
  assert.throws(() => UdpSocket.bind(LOOPBACK, 0, { batch: 0 }), RangeError);
  assert.throws(() => UdpSocket.bind(LOOPBACK, 0, { maxDatagram: 70000 }), RangeError);
});

Deno.test("GSO sends and GRO receives: the same datagrams, in order, as sent one by one", async () => {
  const a = UdpSocket.bind(LOOPBACK, 0, { batch: 64, maxDatagram: 2048 });
  const b = UdpSocket.bind(LOOPBACK, 0, { batch: 64, maxDatagram: 2048 });
  const c = UdpSocket.bind(LOOPBACK, 0, { batch: 64, maxDatagram: 2048 });
  try {
    const gso = a.enableGso();
    const gro = b.enableGro();
    assert.deepEqual(a.offloads, { gso, gro: false });
    assert.deepEqual(b.offloads, { gso: false, gro });
    // Runs of equal sizes, a shorter one closing each run, a second destination in between,
    // and more datagrams than one run may hold.
    const plan: { size: number; to: UdpSocket }[] = [];
    for (let i = 0; i < 70; i++) plan.push({ size: 1456, to: b });
    plan.push({ size: 700, to: b });
    for (let i = 0; i < 3; i++) plan.push({ size: 1456, to: c });
    for (let i = 0; i < 5; i++) plan.push({ size: 1000 + i, to: b });
    const sent = plan.map((p, i) => ({
      data: new Uint8Array(p.size).map((_, k) => (i * 7 + k) & 0xff),
      to: p.to,
    }));
    for (const s of sent) {
      const slot = a.sendSlot()!;
      slot.set(s.data);
      assert.ok(a.queue(slot.subarray(0, s.data.length), LOOPBACK, s.to.localPort));
    }
    a.flush();
    assert.equal(a.stats.sent, sent.length);
    const forB = sent.filter((s) => s.to === b);
    const forC = sent.filter((s) => s.to === c);
    const gotB = await receive(b, forB.length);
    const gotC = await receive(c, forC.length);
    assert.deepEqual(gotB.map((d) => d.data), forB.map((s) => s.data));
    assert.deepEqual(gotC.map((d) => d.data), forC.map((s) => s.data));
    for (const d of gotB) assert.equal(d.port, a.localPort);
  } finally {
    a.close();
    b.close();
    c.close();
  }
});
