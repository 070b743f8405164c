// What a forged tunnel packet costs the receiver, against a genuine one (issue 10, point 3).
// An attacker who knows a tunnel id (it is in every packet) can send packets with any epoch and
// counter; each must cost about what a genuine packet costs, whatever it claims.
//
//   deno bench --allow-read=tests/fixtures bench/forgery_bench.ts
//
// Baseline: opening a genuine 1200-byte packet in order. Every other row is a forgery the
// session refuses; Deno's summary gives each as a multiple of the baseline.

import { installAeadBackend } from "../lib/runtime/aead_backend.ts";
import {
  CATCH_UP_STEPS,
  MAX_DERIVATIONS_PER_PACKET,
  RECEIVE_WINDOW,
  TunnelSession,
} from "../lib/core/session.ts";
import { MAX_CHAIN_KEYS } from "../lib/core/constants.ts";

installAeadBackend(); // the backend a daemon would choose

const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));
const payload = random(1200);

function pair(): { a: TunnelSession; b: TunnelSession } {
  const tid = random(32);
  const i2r = random(32);
  const r2i = random(32);
  return {
    a: TunnelSession.create(tid, i2r.slice(), r2i.slice(), 1),
    b: TunnelSession.create(tid, r2i, i2r, 1),
  };
}

const genuine = pair();
const victim = pair();
// a packet of the victim's tunnel to start forgeries from: right tid, wrong tag
const template = victim.a.sealPacket(payload, 1);
victim.b.openPacket(victim.a.sealPacket(payload, 1), 1); // the receiver has seen traffic

function forged(epoch: number, ctr: number): Uint8Array {
  const p = template.slice();
  const v = new DataView(p.buffer);
  v.setUint16(34, epoch);
  v.setUint32(36, ctr);
  p[p.length - 1] ^= 0x55;
  return p;
}

const cases: [string, Uint8Array][] = [
  ["forged, key already derived (bad tag)", forged(0, 5)],
  ["forged, counter far ahead in the window", forged(0, MAX_CHAIN_KEYS - 1)],
  ["forged, next epoch", forged(1, 0)],
  ["forged, newest epoch in the window, far counter", forged(4, MAX_CHAIN_KEYS - 1)],
  ["forged, epoch out of window", forged(40_000, 0)],
  ["forged, counter out of window", forged(0, 1_000_000)],
  ["replay of a used counter", forged(0, 1)],
];

Deno.bench({
  name: "genuine packet, 1200 B (in order)",
  group: "forgery",
  baseline: true,
  fn: (b) => {
    const packet = genuine.a.sealPacket(payload, 1);
    b.start();
    const r = genuine.b.openPacket(packet, 1);
    b.end();
    if (!r.ok) throw new Error(`genuine packet refused: ${r.reason}`);
  },
});

// The worst a forgery can do: the first one of its kind on a session, claiming the farthest
// counter of the latest epoch's window (MAX_DERIVATIONS_PER_PACKET kdf calls; once per epoch
// beyond what genuine traffic causes). Later ones find those keys derived already (the rows
// above).
Deno.bench({
  name: "first forgery on a session: the far end of the latest epoch's window (worst case)",
  group: "forgery",
  fn: (b) => {
    const fresh = pair();
    const p = fresh.a.sealPacket(payload, 1);
    const v = new DataView(p.buffer);
    v.setUint16(34, 0);
    v.setUint32(36, RECEIVE_WINDOW - 1);
    p[p.length - 1] ^= 0x55;
    b.start();
    const r = fresh.b.openPacket(p, 1);
    b.end();
    if (r.ok || fresh.b.derivations !== MAX_DERIVATIONS_PER_PACKET) {
      throw new Error(`worst case is not the bound: ${fresh.b.derivations}`);
    }
  },
});

// Beyond the window (what a burst of losses leaves, or a forger's huge counter): a walk of the
// chain within the session's budget. The first such forgery on a fresh session spends the whole
// bucket (CATCH_UP_STEPS kdf calls, checked by the row); after it the bucket refills at
// CATCH_UP_STEPS a second, so this is the most one session costs per second beyond the window.
Deno.bench({
  name: "first forgery on a session beyond the window: a full catch-up budget",
  group: "forgery",
  fn: (b) => {
    const fresh = pair();
    const p = fresh.a.sealPacket(payload, 1);
    const v = new DataView(p.buffer);
    v.setUint32(36, 0xffffffff);
    p[p.length - 1] ^= 0x55;
    b.start();
    const r = fresh.b.openPacket(p, 1);
    b.end();
    if (r.ok || fresh.b.derivations !== CATCH_UP_STEPS) {
      throw new Error(`not the budget: ${fresh.b.derivations}`);
    }
  },
});

for (const [name, packet] of cases) {
  Deno.bench({
    name,
    group: "forgery",
    fn: () => {
      if (victim.b.openPacket(packet, 1).ok) throw new Error("a forgery opened");
    },
  });
}
