// The load generator's flat bookkeeping (tests/helpers/handshake_gen.ts): what it sends is what
// a client's session would send, and what it counts as answered is exactly what that session
// would open. Also its zero-copy send path (source_socket.ts), over loopback.

import assert from "node:assert/strict";
import { PreparedStep } from "./helpers/handshake_gen.ts";
import { icmpEcho, type InitiationParts } from "./helpers/initiations.ts";
import { SourceSocket } from "./helpers/source_socket.ts";
import { TunnelSession } from "../lib/core/session.ts";
import { HANDSHAKE_BYTES } from "../lib/core/constants.ts";
import { UdpSocket } from "../ffi/udp.ts";
import { addressOf } from "../ffi/libc.ts";
import { ipv4ToNumber } from "../lib/core/ip.ts";

const ECHO_BYTES = 84;

/** Random roots and id, and a message that stands for the initiation (only copied here). */
function parts(seed: number): InitiationParts {
  const r = () => crypto.getRandomValues(new Uint8Array(32));
  const message = new Uint8Array(HANDSHAKE_BYTES).fill(seed);
  return { message, tid: r(), i2r: r(), r2i: r() };
}

/** The server's side of handshake `hs`: it receives with i2r and sends with r2i. */
function responder(hs: InitiationParts): TunnelSession {
  return TunnelSession.create(hs.tid, hs.r2i.slice(), hs.i2r.slice(), 0);
}

function prepared(count: number) {
  const step = new PreparedStep();
  step.reset(count);
  const hs = Array.from({ length: count }, (_, j) => parts(j));
  const servers = hs.map(responder); // before set(), which erases the roots
  hs.forEach((h, j) => step.set(j, h, (k) => icmpEcho(1, 2, j, k), 0));
  return { step, servers };
}

Deno.test("handshake_gen: echoes open with the server's session, in counter order", () => {
  const { step, servers } = prepared(3);
  for (let j = 0; j < 3; j++) {
    const initiation = step.initiations.subarray(j * HANDSHAKE_BYTES, (j + 1) * HANDSHAKE_BYTES);
    assert.ok(initiation.every((b) => b === j), `initiation ${j}`);
    for (let k = 0; k < 4; k++) {
      const at = (j * 4 + k) * ECHO_BYTES;
      const r = servers[j].openPacket(step.echoes.slice(at, at + ECHO_BYTES), 0);
      assert.ok(r.ok, `echo ${k} of handshake ${j}`);
      assert.equal(r.ctr, k);
      assert.deepEqual(r.plaintext, icmpEcho(1, 2, j, k));
    }
  }
});

Deno.test("handshake_gen: a reply counts only when it opens with its handshake's keys", () => {
  const { step, servers } = prepared(50);
  const reply = (j: number) => servers[j].sealPacket(icmpEcho(2, 1, j, 0), 0);
  for (const j of [0, 17, 49]) {
    for (let k = 0; k < 4; k++) {
      const r = reply(j);
      assert.equal(step.find(r), j);
      assert.ok(step.opens(j, r), `reply ${k} of handshake ${j}`);
    }
    // a fifth reply: the server answers at most one per echo, so it is not counted
    const fifth = reply(j);
    assert.equal(step.find(fifth), j);
    assert.equal(step.opens(j, fifth), false);
  }
  // forged: one bit of the sealed part, or of the header (associated data)
  for (const at of [50, 39]) {
    const r = reply(5);
    r[at] ^= 1;
    assert.equal(step.opens(5, r), false, `byte ${at} flipped`);
  }
  // another handshake's reply under this one's tunnel id
  const other = reply(6);
  other.set(servers[5].tid, 2);
  assert.equal(step.find(other), 5);
  assert.equal(step.opens(5, other), false);
  // an id it never sent
  const stranger = reply(7);
  stranger[10] ^= 0xff;
  assert.equal(step.find(stranger), -1);
});

Deno.test("handshake_gen: queueAt sends prepared bytes without copying them", async () => {
  const rx = UdpSocket.bind(ipv4ToNumber("127.0.0.1"), 0, { batch: 8, maxDatagram: 2048 });
  const tx = new SourceSocket(4);
  try {
    const bytes = crypto.getRandomValues(new Uint8Array(5000));
    const base = Number(addressOf(bytes));
    const lo = ipv4ToNumber("127.0.0.1");
    // more than a batch: the fifth goes after the first four were flushed
    const spans = [[0, 1299], [1299, 84], [4000, 1000], [7, 1], [100, 600]];
    for (const [at, n] of spans) tx.queueAt(bytes, base, at, n, lo, lo, rx.localPort);
    tx.queue(new Uint8Array([1, 2, 3]), lo, lo, rx.localPort);
    tx.flush();
    assert.throws(() => tx.queueAt(bytes, base, 4900, 200, lo, lo, rx.localPort), RangeError);
    const got: Uint8Array[] = [];
    for (let i = 0; i < 50 && got.length < 6; i++) {
      rx.recvEach((d) => void got.push(d.slice()));
      if (got.length < 6) await new Promise((r) => setTimeout(r, 2));
    }
    assert.deepEqual(got, [
      ...spans.map(([at, n]) => bytes.slice(at, at + n)),
      new Uint8Array([1, 2, 3]),
    ]);
    assert.equal(tx.sendFailures, 0);
  } finally {
    tx.close();
    rx.close();
  }
});
