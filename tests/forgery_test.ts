// Issue 10, point 3: what a forged tunnel packet may cost. A header no genuine packet can have
// (an epoch out of reach, a counter used already) is refused before any key is derived; inside
// the receive window one packet causes at most MAX_DERIVATIONS_PER_PACKET derivations, and
// repeating it none; no forgery moves an epoch or harms the genuine packets that follow. Beyond
// the window (what a burst of losses leaves) the cost is the session's catch-up budget:
// tests/catch_up_test.ts.

import assert from "node:assert/strict";
import { MAX_DERIVATIONS_PER_PACKET, RECEIVE_WINDOW, TunnelSession } from "../lib/core/session.ts";
import { EPOCH_SECONDS, MAX_CHAIN_KEYS, MAX_EPOCHS } from "../lib/core/constants.ts";
import { Prng } from "./helpers/prng.ts";

function pair(now = 0) {
  const tid = crypto.getRandomValues(new Uint8Array(32));
  const a = crypto.getRandomValues(new Uint8Array(32));
  const b = crypto.getRandomValues(new Uint8Array(32));
  return {
    sender: TunnelSession.create(tid, a.slice(), b.slice(), now),
    receiver: TunnelSession.create(tid, b.slice(), a.slice(), now),
  };
}

const payload = new Uint8Array([1, 2, 3, 4]);

function forge(template: Uint8Array, epoch: number, ctr: number): Uint8Array {
  const p = template.slice();
  const v = new DataView(p.buffer);
  v.setUint16(34, epoch);
  v.setUint32(36, ctr);
  p[p.length - 1] ^= 0x5a;
  return p;
}

Deno.test("forgery: epochs out of reach and used counters cost no derivation", () => {
  const { sender, receiver } = pair();
  const t = sender.sealPacket(payload, 1);
  assert.ok(receiver.openPacket(t, 1).ok);
  const cases: [number, number][] = [
    [MAX_EPOCHS, 0], // would make a sixth live epoch
    [40_000, 0],
    [0xffff, 0xffffffff],
    [0, 0], // used already
    [0, 17], // the keys of counter 0's step are held: opening it costs none
  ];
  for (const [epoch, ctr] of cases) {
    const before = receiver.derivations;
    assert.equal(receiver.openPacket(forge(t, epoch, ctr), 1).ok, false);
    assert.equal(receiver.derivations, before, `epoch ${epoch} ctr ${ctr}`);
  }
});

Deno.test("forgery: in the window, at most MAX_DERIVATIONS_PER_PACKET once, then none", () => {
  const rng = new Prng(3);
  let worst = 0;
  for (let round = 0; round < 200; round++) {
    const { sender, receiver } = pair();
    const t = sender.sealPacket(payload, 1);
    // inside the window (beyond it is tests/catch_up_test.ts): epoch 0's, or a newer epoch's
    const epoch = rng.int(MAX_EPOCHS + 1);
    const ctr = rng.int(epoch === 0 ? RECEIVE_WINDOW : MAX_CHAIN_KEYS);
    const p = forge(t, epoch, ctr);
    const before = receiver.derivations;
    assert.equal(receiver.openPacket(p, 1).ok, false);
    const cost = receiver.derivations - before;
    assert.ok(cost <= MAX_DERIVATIONS_PER_PACKET, `epoch ${epoch} ctr ${ctr}: ${cost}`);
    worst = Math.max(worst, cost);
    const again = receiver.derivations;
    assert.equal(receiver.openPacket(p, 1).ok, false);
    assert.equal(receiver.derivations, again, "a repeated forgery derives nothing");
    assert.equal(receiver.receiveEpoch, 0, "no forgery moves an epoch");
    assert.equal(receiver.sendEpoch, 0);
    // the genuine packet still opens
    assert.ok(receiver.openPacket(t, 1).ok);
  }
  const { sender, receiver } = pair();
  const t = sender.sealPacket(payload, 1);
  receiver.openPacket(forge(t, 0, RECEIVE_WINDOW - 1), 1);
  assert.equal(receiver.derivations, MAX_DERIVATIONS_PER_PACKET, "the bound is reached");
  const further = pair();
  const f = further.sender.sealPacket(payload, 1);
  further.receiver.openPacket(forge(f, MAX_EPOCHS - 1, MAX_CHAIN_KEYS - 1), 1);
  assert.ok(further.receiver.derivations <= MAX_DERIVATIONS_PER_PACKET, "newest epoch, far ctr");
  assert.ok(worst <= MAX_DERIVATIONS_PER_PACKET);
});

Deno.test("forgery: epochs derived for forgeries never shorten a genuine epoch's life", () => {
  const { sender, receiver } = pair(0);
  assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
  // at t=2 an attacker makes the receiver derive epochs 1..4 (aside, not live)
  const t = sender.sealPacket(payload, 2);
  for (let e = 1; e < MAX_EPOCHS; e++) receiver.openPacket(forge(t, e, 3), 2);
  assert.equal(receiver.receiveEpoch, 0);
  // the sender reaches epoch 3 at t=95; its packets at t=200 must still open: epoch 3 became
  // live at 95, not at 2
  const p95 = sender.sealPacket(payload, 95);
  assert.equal(sender.sendEpoch, 3);
  const p96 = sender.sealPacket(payload, 96);
  assert.ok(receiver.openPacket(p95, 95).ok);
  assert.equal(receiver.receiveEpoch, 3);
  assert.ok(receiver.openPacket(p96, 95 + 4 * EPOCH_SECONDS - 1).ok, "epoch 3 lives 120 s from 95");
});
