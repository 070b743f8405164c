// The tunnel session's state machine: epochs over time, erasure, replays and bounds.

import assert from "node:assert/strict";
import { RECEIVE_WINDOW, SendChain, TunnelSession } from "../lib/core/session.ts";
import { EPOCH_LIFETIME_SECONDS, MAX_CHAIN_KEYS } from "../lib/core/constants.ts";

function pair(now = 0) {
  const tid = crypto.getRandomValues(new Uint8Array(32));
  const a = crypto.getRandomValues(new Uint8Array(32));
  const b = crypto.getRandomValues(new Uint8Array(32));
  const initiator = TunnelSession.create(tid, a.slice(), b.slice(), now);
  const responder = TunnelSession.create(tid, b.slice(), a.slice(), now);
  return { initiator, responder };
}

const payload = (n: number) => new Uint8Array([n & 0xff, n >> 8, 1, 2, 3]);

Deno.test("session: counters increase, a replayed packet fails, out-of-order works", () => {
  const { initiator, responder } = pair();
  const packets = Array.from({ length: 50 }, (_, i) => initiator.sealPacket(payload(i), 1));
  const order = [...packets.keys()].reverse();
  for (const i of order) {
    const r = responder.openPacket(packets[i], 1);
    assert.ok(r.ok, `packet ${i}`);
    assert.deepEqual(r.plaintext, payload(i));
    assert.equal(r.ctr, i);
  }
  for (const i of [0, 17, 18, 49]) {
    const r = responder.openPacket(packets[i], 1);
    assert.deepEqual(r, { ok: false, reason: "no-key" }, `replay of ${i}`);
  }
});

Deno.test("session: a forged packet changes nothing, the genuine one still opens", () => {
  const { initiator, responder } = pair();
  const p = initiator.sealPacket(payload(1), 1);
  const forged = p.slice();
  forged[45] ^= 1;
  assert.deepEqual(responder.openPacket(forged, 1), { ok: false, reason: "auth" });
  assert.ok(responder.openPacket(p, 1).ok);
  // a forged packet claiming a later epoch must not move the responder's epochs
  const q = initiator.sealPacket(payload(2), 1);
  const future = q.slice();
  future[35] = 3; // epoch 3
  assert.deepEqual(responder.openPacket(future, 1), { ok: false, reason: "auth" });
  assert.equal(responder.receiveEpoch, 0);
  assert.equal(responder.sendEpoch, 0);
  assert.ok(responder.openPacket(q, 1).ok);
});

Deno.test("session: the receiver derives a bounded window ahead of the newest packet", () => {
  const { initiator, responder } = pair();
  const n = RECEIVE_WINDOW + 200;
  const packets = Array.from({ length: n }, (_, i) => initiator.sealPacket(payload(i), 1));
  // the latest epoch's window reaches RECEIVE_WINDOW past the newest verified packet (none: -1):
  // inside it the chain steps and keeps every key
  assert.ok(responder.openPacket(packets[RECEIVE_WINDOW - 1], 1).ok);
  assert.equal(responder.derivations, Math.ceil(RECEIVE_WINDOW / 18));
  assert.ok(responder.openPacket(packets[RECEIVE_WINDOW - 50], 1).ok, "keys inside it were kept");
  // the window moved with it
  assert.ok(responder.openPacket(packets[n - 1], 1).ok);
  // Beyond the window the chain is walked on to the packet's step alone: one kdf call per step,
  // the keys of the steps passed are never derived.
  const far = pair();
  const before = far.responder.derivations;
  assert.ok(far.responder.openPacket(far.initiator.sealPacket(payload(0), 1), 1).ok);
  const skipped = Array.from({ length: n }, (_, i) => far.initiator.sealPacket(payload(i), 1));
  assert.ok(far.responder.openPacket(skipped[n - 1], 1).ok, "beyond: caught up");
  const steps = Math.floor(n / 18) - 1; // from the step after counter 0's to counter n's
  assert.equal(far.responder.derivations - before, 1 + steps + 1);
  assert.equal(far.responder.openPacket(skipped[n - 40], 1).ok, false, "a step passed: no key");
  assert.ok(far.responder.openPacket(skipped[n - 2], 1).ok, "the same step: its key was kept");
  // an epoch not adopted yet: MAX_CHAIN_KEYS as in the reference, then walked to in the same way
  const fresh = pair(0);
  fresh.initiator.sealPacket(payload(0), 1);
  const next = Array.from(
    { length: MAX_CHAIN_KEYS + 1 },
    (_, i) => fresh.initiator.sealPacket(payload(i), 31),
  );
  assert.equal(fresh.initiator.sendEpoch, 1);
  assert.ok(fresh.responder.openPacket(next[MAX_CHAIN_KEYS - 1], 31).ok);
  const steps1 = fresh.responder.derivations;
  assert.equal(steps1, 1 + MAX_CHAIN_KEYS / 18, "epoch 1's root, then 5 chain steps");
  const later = pair(0);
  later.initiator.sealPacket(payload(0), 1);
  const beyond = Array.from(
    { length: MAX_CHAIN_KEYS + 1 },
    (_, i) => later.initiator.sealPacket(payload(i), 31),
  );
  assert.ok(later.responder.openPacket(beyond[MAX_CHAIN_KEYS], 31).ok);
  assert.equal(later.responder.receiveEpoch, 1);
});

Deno.test("session: the sender moves epoch every 30 s and the receiver follows", () => {
  const { initiator, responder } = pair(0);
  const p0 = initiator.sealPacket(payload(0), 10);
  assert.equal(initiator.sendEpoch, 0);
  const p1 = initiator.sealPacket(payload(1), 31);
  assert.equal(initiator.sendEpoch, 1);
  const p3 = initiator.sealPacket(payload(3), 95);
  assert.equal(initiator.sendEpoch, 3);
  assert.ok(responder.openPacket(p3, 95).ok, "jumps two epochs ahead");
  assert.equal(responder.receiveEpoch, 3);
  assert.equal(responder.sendEpoch, 3, "the responder's sending side followed");
  assert.ok(responder.openPacket(p1, 96).ok, "older epochs still live");
  assert.ok(responder.openPacket(p0, 97).ok);
  // responder's replies at epoch 3 open at the initiator
  const back = responder.sealPacket(payload(9), 97);
  const r = initiator.openPacket(back, 97);
  assert.ok(r.ok);
  assert.equal(r.epoch, 3);
});

Deno.test("session: at most 5 epochs live; an epoch is erased 120 s after creation", () => {
  const { initiator, responder } = pair(0);
  const early = initiator.sealPacket(payload(0), 1);
  // the sender jumps far ahead: 6 epochs would be needed, but only 5 can be live
  const far = initiator.sealPacket(payload(1), 1 + 30 * 5 + 1);
  assert.equal(initiator.sendEpoch, 5);
  assert.equal(responder.openPacket(far, 100).ok, false, "epoch 5 would be the sixth live epoch");
  assert.equal(responder.receiveEpoch, 0);
  // a packet at epoch 0 still opens before 120 s ...
  assert.ok(responder.openPacket(early, 119).ok);
  const again = initiator.sealPacket(payload(2), 1 + 30 * 5 + 2);
  // ... and after 120 s epoch 0 is gone, and with it the whole session
  assert.equal(responder.alive(EPOCH_LIFETIME_SECONDS), false);
  assert.deepEqual(responder.openPacket(again, EPOCH_LIFETIME_SECONDS), {
    ok: false,
    reason: "expired",
  });
});

Deno.test("session: a steady flow keeps the session alive past 120 s", () => {
  const { initiator, responder } = pair(0);
  for (let t = 1; t < 400; t += 7) {
    const p = initiator.sealPacket(payload(t), t);
    const r = responder.openPacket(p, t);
    assert.ok(r.ok, `t=${t}`);
    const back = responder.sealPacket(payload(t), t);
    assert.ok(initiator.openPacket(back, t).ok, `back at t=${t}`);
  }
  assert.ok(responder.alive(400));
  assert.ok(initiator.sendEpoch >= 13);
});

Deno.test("session: packets of another tunnel, short packets and a closed session", () => {
  const { initiator, responder } = pair();
  const other = pair();
  assert.deepEqual(responder.openPacket(other.initiator.sealPacket(payload(0), 1), 1), {
    ok: false,
    reason: "tid",
  });
  assert.deepEqual(responder.openPacket(new Uint8Array(55), 1), { ok: false, reason: "short" });
  const p = initiator.sealPacket(payload(0), 1);
  const wrongType = p.slice();
  wrongType[0] = 1;
  assert.deepEqual(responder.openPacket(wrongType, 1), { ok: false, reason: "type" });
  responder.close();
  assert.deepEqual(responder.openPacket(p, 1), { ok: false, reason: "expired" });
  assert.throws(() => responder.sealPacket(payload(1), 1));
});

Deno.test("session: cookie state rebuilds both sides at the next epoch", () => {
  const { initiator, responder } = pair(0);
  assert.ok(responder.openPacket(initiator.sealPacket(payload(0), 1), 1).ok);
  const state = responder.cookieState(1)!;
  assert.equal(state.epoch, 0);
  responder.close();
  const restored = TunnelSession.fromCookie(
    initiator.tid,
    state.epoch,
    state.sendRoot,
    state.recvRoot,
    5,
  );
  // the client learns of the cookie inside the tunnel and moves to epoch 1
  initiator.adoptCookieEpoch(5);
  assert.equal(initiator.sendEpoch, 1);
  const p = initiator.sealPacket(payload(7), 6);
  const r = restored.openPacket(p, 6);
  assert.ok(r.ok);
  assert.equal(r.epoch, 1);
  assert.ok(initiator.openPacket(restored.sealPacket(payload(8), 6), 6).ok);
});

Deno.test("session: a sender's keys not used when its epoch moves on, or it closes, are erased", () => {
  for (const end of ["advance", "clear"] as const) {
    const chain = new SendChain(crypto.getRandomValues(new Uint8Array(32)), 0, 0);
    const key = chain.take(0);
    // kdf hands out one chain step as views of one buffer: the next chain key and 18 packet keys.
    const step = new Uint8Array(key.buffer, key.byteOffset - 32, 19 * 32);
    assert.equal(step.byteLength, key.buffer.byteLength);
    key.fill(0); // what the sealer does with a key once used
    for (let i = 1; i < 5; i++) chain.take(0).fill(0);
    assert.ok(step.some((b) => b !== 0), "13 keys of this step still unused");
    if (end === "advance") chain.advance(31);
    else chain.clear();
    assert.ok(step.every((b) => b === 0), end);
  }
});
