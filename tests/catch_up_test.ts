// Issue 10 (leftovers): a burst of losses longer than the receive window. Before, every later
// packet of the epoch was beyond the window (tunnel-no-key) until the sender's next epoch, up to
// 30 s. Now a packet beyond the window walks a copy of the chain on to its step, within a budget
// of CATCH_UP_STEPS kdf calls per second per session, and the epoch jumps there only once the
// packet verifies. Both ends are real sessions with real keys; the attacker cases assert the
// work (derivations) and memory (receiveKeyBytes) bounds.

import assert from "node:assert/strict";
import {
  CATCH_UP_STEPS,
  MAX_DERIVATIONS_PER_PACKET,
  RECEIVE_WINDOW,
  SendChain,
  TunnelSession,
} from "../lib/core/session.ts";
import { KEYS_PER_CHAIN_STEP, MAX_CHAIN_KEYS, MAX_EPOCHS } from "../lib/core/constants.ts";
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

const payload = new Uint8Array([4, 5, 6]);

function forge(template: Uint8Array, epoch: number, ctr: number): Uint8Array {
  const p = template.slice();
  const v = new DataView(p.buffer);
  v.setUint16(34, epoch);
  v.setUint32(36, ctr);
  p[p.length - 1] ^= 0x5a;
  return p;
}

/** `n` packets sealed and lost. */
function lose(sender: TunnelSession, n: number, now: number): void {
  for (let i = 0; i < n; i++) sender.sealPacket(payload, now);
}

/** The walk of the receiving epoch `epoch`, read through the private fields (to see erasure). */
interface WalkView {
  chain: Uint8Array;
  step: number;
  block: Uint8Array | null;
}
function walkOf(s: TunnelSession, epoch: number): WalkView | null {
  const recv = (s as unknown as { recv: { chains: Map<number, { walk: WalkView | null }> } }).recv;
  return recv.chains.get(epoch)?.walk ?? null;
}

/** Held key bytes a session has with only genuine in-order traffic (its steady state). */
function steadyBytes(): number {
  const { sender, receiver } = pair();
  for (let i = 0; i < 200; i++) receiver.openPacket(sender.sealPacket(payload, 1), 1);
  return receiver.receiveKeyBytes;
}

Deno.test("catch-up: after a 5000- or a 20,000-packet burst the next packet opens at once", () => {
  for (const burst of [2100, 5000, 20_000, 36_000]) {
    const { sender, receiver } = pair();
    for (let i = 0; i < 100; i++) {
      assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
    }
    lose(sender, burst, 1);
    const before = receiver.derivations;
    const first = sender.sealPacket(payload, 1);
    const r = receiver.openPacketInPlace(first, 1);
    assert.ok(r.ok, `burst ${burst}: the first packet after it`);
    assert.equal(r.ctr, 100 + burst);
    // one kdf call per chain step walked, one for the packet's block: nothing more
    const cost = receiver.derivations - before;
    assert.ok(cost <= Math.ceil(burst / KEYS_PER_CHAIN_STEP) + 1, `burst ${burst}: ${cost}`);
    assert.ok(cost <= CATCH_UP_STEPS);
    // the flow goes on inside the moved window, in order and a little out of order
    const next = Array.from({ length: 300 }, () => sender.sealPacket(payload, 1));
    for (let i = 0; i < next.length; i += 2) {
      assert.ok(receiver.openPacket(next[i + 1], 1).ok, `burst ${burst}, +${i + 1}`);
      assert.ok(receiver.openPacket(next[i], 1).ok, `burst ${burst}, +${i}`);
    }
    assert.equal(receiver.receiveEpoch, 0);
    assert.equal(walkOf(receiver, 0), null, "the walk ended with the jump");
    // back to a steady state's memory: the keys left behind were forgotten
    assert.ok(
      receiver.receiveKeyBytes <= steadyBytes() + 2 * 19 * 32,
      `${receiver.receiveKeyBytes}`,
    );
    // the replies go back as before
    assert.ok(sender.openPacket(receiver.sealPacket(payload, 1), 1).ok);
  }
});

Deno.test("catch-up: a burst longer than one budget: the flow is back within a second", () => {
  const { sender, receiver } = pair();
  assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
  // 50,000 packets lost (2778 chain steps: more than the CATCH_UP_STEPS one packet may walk)
  lose(sender, 50_000, 1);
  // the sender goes on at 1000 packets a second
  let back = -1;
  for (let ms = 0; ms < 3000 && back < 0; ms++) {
    const now = 1 + ms / 1000;
    if (receiver.openPacket(sender.sealPacket(payload, now), now).ok) back = ms;
  }
  assert.ok(back >= 0 && back <= 1000, `back after ${back} ms`);
  assert.ok(receiver.derivations <= 1 + 2 * CATCH_UP_STEPS, `${receiver.derivations} kdf calls`);
  for (let i = 0; i < 100; i++) assert.ok(receiver.openPacket(sender.sealPacket(payload, 3), 3).ok);
});

Deno.test("catch-up: a burst across the sender's epoch change opens the new epoch", () => {
  const { sender, receiver } = pair(0);
  for (let i = 0; i < 50; i++) assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
  lose(sender, 3000, 20);
  lose(sender, 5000, 31); // epoch 1 from here: its first packets lost too
  assert.equal(sender.sendEpoch, 1);
  const p = sender.sealPacket(payload, 32);
  const r = receiver.openPacket(p, 32);
  assert.ok(r.ok && r.epoch === 1 && r.ctr === 5000, "epoch 1, counter 5000");
  assert.equal(receiver.receiveEpoch, 1);
  assert.equal(receiver.sendEpoch, 1, "the receiver's sending side followed");
  for (let i = 0; i < 100; i++) {
    assert.ok(receiver.openPacket(sender.sealPacket(payload, 33), 33).ok);
  }
});

Deno.test("catch-up: a forger with any counter gets CATCH_UP_STEPS a second, in bounded memory", () => {
  const { sender, receiver } = pair(0);
  const rng = new Prng(10);
  for (let i = 0; i < 100; i++) assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
  const template = sender.sealPacket(payload, 1); // lost: the forger's copy
  const start = receiver.derivations;
  let most = 0;
  const seconds = 10;
  const perSecond: number[] = [];
  for (let s = 0; s < seconds; s++) {
    const at = receiver.derivations;
    for (let k = 0; k < 1000; k++) {
      const now = 1 + s + k / 1000;
      // huge counters, far and near ones beyond the window, the largest, newer epochs
      const kind = rng.int(5);
      const p = kind === 0
        ? forge(template, 0, 0xffffffff)
        : kind === 1
        ? forge(template, 0, 200_000 + rng.int(0xfff00000))
        : kind === 2
        ? forge(template, 0, 100 + RECEIVE_WINDOW + rng.int(5000))
        : forge(template, 1 + rng.int(MAX_EPOCHS - 1), MAX_CHAIN_KEYS + rng.int(1 << 30));
      const r = receiver.openPacket(p, now);
      assert.equal(r.ok, false);
      most = Math.max(most, receiver.receiveKeyBytes);
    }
    perSecond.push(receiver.derivations - at);
  }
  const total = receiver.derivations - start;
  // a full bucket, then CATCH_UP_STEPS a second; the roots of the newer epochs set aside
  assert.ok(total <= CATCH_UP_STEPS * (seconds + 1) + MAX_EPOCHS, `${total} in ${seconds} s`);
  for (const n of perSecond.slice(1)) assert.ok(n <= CATCH_UP_STEPS + MAX_EPOCHS + 1, `${n}`);
  // memory: a walk (chain key and one block) per epoch it can reach, and the epochs aside
  const bound = steadyBytes() + MAX_EPOCHS * (32 + 19 * 32) + (MAX_EPOCHS - 1) * 64 + 19 * 32;
  assert.ok(most <= bound, `${most} bytes held, bound ${bound}`);
  console.log(
    `forger: ${total} kdf calls in ${seconds} s, ${perSecond.join(" ")} a second; ` +
      `${most} key bytes held at most (steady ${steadyBytes()}, bound ${bound})`,
  );
  // nothing moved: the genuine packets go on in the window, and after a burst of their own
  assert.equal(receiver.receiveEpoch, 0);
  assert.equal(receiver.sendEpoch, 0);
  for (let i = 0; i < 100; i++) {
    assert.ok(receiver.openPacket(sender.sealPacket(payload, 11), 11).ok, `genuine ${i}`);
  }
  lose(sender, 5000, 11);
  // the forger drained the bucket: within a second of its stopping the genuine burst is crossed
  assert.ok(receiver.openPacket(sender.sealPacket(payload, 11.2), 11.2).ok, "caught up");
});

Deno.test("catch-up: forgeries just beyond the window, repeated, cost nothing after the first", () => {
  const { sender, receiver } = pair();
  const packets = Array.from({ length: 3000 }, () => sender.sealPacket(payload, 1));
  for (let i = 0; i < 100; i++) assert.ok(receiver.openPacket(packets[i], 1).ok);
  const base = receiver.derivations;
  const edge = 99 + RECEIVE_WINDOW + 1; // newest verified: 99
  assert.equal(receiver.openPacket(forge(packets[0], 0, edge), 1).ok, false);
  const first = receiver.derivations - base;
  assert.ok(first >= 1 && first <= MAX_DERIVATIONS_PER_PACKET + 1, `${first}`);
  const walk = walkOf(receiver, 0)!;
  const step = Math.floor(edge / KEYS_PER_CHAIN_STEP);
  assert.equal(walk.step, step);
  // the same step again and again: its block is kept aside, nothing is derived
  for (let k = 0; k < 1000; k++) {
    const ctr = step * KEYS_PER_CHAIN_STEP + (k % KEYS_PER_CHAIN_STEP);
    if (ctr <= 99 + RECEIVE_WINDOW) continue; // inside the window: a key of the chain's own
    assert.equal(receiver.openPacket(forge(packets[0], 0, ctr), 1).ok, false);
  }
  assert.equal(receiver.derivations - base, first, "repeats derived nothing");
  // the genuine packets inside the window open, and their chain passes the walk: it is erased
  const chain = walk.chain;
  const block = walk.block!;
  for (let i = 100; i < 3000; i++) assert.ok(receiver.openPacket(packets[i], 1).ok, `packet ${i}`);
  assert.equal(walkOf(receiver, 0), null);
  assert.ok(chain.every((b) => b === 0) && block.every((b) => b === 0), "the walk's keys erased");
});

Deno.test("catch-up: a forger's walk past the genuine packets costs them nothing", () => {
  const { sender, receiver } = pair();
  for (let i = 0; i < 100; i++) assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
  const template = sender.sealPacket(payload, 1);
  // the forger walks the chain far past where the genuine sender will be
  assert.equal(receiver.openPacket(forge(template, 0, 30_000), 1).ok, false);
  const walk = walkOf(receiver, 0)!;
  const chain = walk.chain;
  const block = walk.block!;
  lose(sender, 5000, 1);
  // the genuine packet's step lies behind the walk: the receiver walks again from its own chain
  const p = sender.sealPacket(payload, 1.5);
  assert.ok(receiver.openPacket(p, 1.5).ok, "the genuine packet opened");
  assert.ok(block.every((b) => b === 0), "the forger's block was erased on the way back");
  assert.equal(walkOf(receiver, 0), null, "and the walk ended with the jump");
  assert.ok(chain.every((b) => b === 0));
  // a replay of the packet that made the jump, and the forgery again: refused
  assert.equal(receiver.openPacket(p, 1.5).ok, false);
  assert.equal(receiver.openPacket(forge(template, 0, 30_000), 1.5).ok, false);
  for (let i = 0; i < 50; i++) assert.ok(receiver.openPacket(sender.sealPacket(payload, 2), 2).ok);
});

Deno.test("catch-up: a packet that verifies after a jump is not accepted twice, none is lost", () => {
  const { sender, receiver } = pair();
  const rng = new Prng(4);
  assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
  const seen = new Set<number>();
  let now = 1;
  // bursts of losses of all lengths, each followed by packets that arrive a little reordered
  for (let round = 0; round < 25; round++) {
    now += 0.25;
    lose(sender, rng.int(8000), now);
    const batch = Array.from({ length: 40 }, () => sender.sealPacket(payload, now));
    const order = [...batch.keys()];
    for (let i = 0; i + 1 < order.length; i++) {
      if (rng.chance(0.3)) [order[i], order[i + 1]] = [order[i + 1], order[i]];
    }
    let opened = 0;
    for (const i of order) {
      const r = receiver.openPacket(batch[i], now);
      if (!r.ok) continue;
      assert.ok(!seen.has(r.ctr), `counter ${r.ctr} twice`);
      seen.add(r.ctr);
      opened++;
    }
    for (const p of batch) assert.equal(receiver.openPacket(p, now).ok, false, "a replay");
    // at most the packets of the step before the jump's are refused (they came before it)
    assert.ok(opened >= batch.length - KEYS_PER_CHAIN_STEP, `round ${round}: ${opened}`);
  }
  assert.equal(receiver.receiveEpoch, 0);
});

Deno.test("catch-up: the sender never passes the u32 counter, it starts the next epoch", () => {
  const chain = new SendChain(crypto.getRandomValues(new Uint8Array(32)), 0, 0);
  // as if 4,294,967,274 packets had gone (a multiple of 18: a chain step starts there)
  const last = Math.floor(0xffffffff / KEYS_PER_CHAIN_STEP) * KEYS_PER_CHAIN_STEP - 18;
  (chain as unknown as { ctr: number }).ctr = last;
  for (let i = 0; i < KEYS_PER_CHAIN_STEP; i++) {
    chain.take(0).fill(0);
    assert.equal(chain.lastCtr, last + i);
    assert.equal(chain.epoch, 0);
  }
  assert.ok(chain.lastCtr <= 0xffffffff);
  chain.take(0).fill(0);
  assert.equal(chain.epoch, 1, "a step that would pass 2^32 - 1 starts epoch 1");
  assert.equal(chain.lastCtr, 0);
});

Deno.test("catch-up: a walk is erased with its epoch, on close and when a newer epoch is adopted", () => {
  for (const end of ["close", "adopt", "expire"] as const) {
    const { sender, receiver } = pair(0);
    assert.ok(receiver.openPacket(sender.sealPacket(payload, 1), 1).ok);
    assert.equal(receiver.openPacket(forge(sender.sealPacket(payload, 1), 0, 9000), 1).ok, false);
    const walk = walkOf(receiver, 0)!;
    const kept = [walk.chain, walk.block!];
    if (end === "close") receiver.close();
    else if (end === "adopt") {
      assert.ok(receiver.openPacket(sender.sealPacket(payload, 31), 31).ok);
      assert.equal(receiver.receiveEpoch, 1);
    } else assert.equal(receiver.alive(121), false);
    assert.ok(kept.every((k) => k.every((b) => b === 0)), end);
  }
});
