// The replay cache (lib/core/replay.ts): its lifetime at the edges, lookups across its
// generations, growth, the full cache, false positives over millions of keys, keys that share
// bits, and its bytes per entry.

import assert from "node:assert/strict";
import {
  halfSipHash64,
  HANDSHAKES_PER_SECOND_PER_WORKER,
  ReplayCache,
  replayCapacityFor,
} from "../lib/core/replay.ts";

const key = () => crypto.getRandomValues(new Uint8Array(8));

/** n random 194-byte ciphertexts, as views into one buffer. */
function randomC0s(n: number): Uint8Array[] {
  const all = new Uint8Array(n * 194);
  for (let o = 0; o < all.length; o += 65536) {
    crypto.getRandomValues(all.subarray(o, Math.min(all.length, o + 65536)));
  }
  return Array.from({ length: n }, (_, i) => all.subarray(i * 194, (i + 1) * 194));
}

/** A new random-looking ciphertext each call: fresh random bytes, a counter in the first 4. */
function c0Stream(): () => Uint8Array {
  const c0 = new Uint8Array(194);
  const view = new DataView(c0.buffer);
  let i = 0;
  return () => {
    if (i % 1024 === 0) crypto.getRandomValues(c0.subarray(4, 32));
    view.setUint32(0, i++, true);
    return c0;
  };
}

/** Fingerprints of n random ciphertexts (the cache only ever sees these). */
function randomKeys(cache: ReplayCache, n: number): Float64Array {
  const out = new Float64Array(n);
  const next = c0Stream();
  for (let i = 0; i < n; i++) out[i] = cache.keyOf(next());
  return out;
}

Deno.test("HalfSipHash-2-4 (64-bit output) matches the reference vectors", () => {
  // Key 00..07, message 00..len-1, from the SipHash authors' vectors_hsip64.
  const expected: Record<number, string> = {
    0: "218d1f59b9b83cc8",
    7: "ff202728b07bc684",
    8: "edfee820bce4858c",
    32: "28709d46d811626c",
    63: "2ea63c71bf326087",
  };
  const out = new Uint32Array(2);
  const msg = Uint8Array.from({ length: 64 }, (_, i) => i);
  const k0 = 0x03020100, k1 = 0x07060504;
  for (const [len, hex] of Object.entries(expected)) {
    halfSipHash64(msg, 0, Number(len), k0, k1, out);
    const got = [...new Uint8Array(out.buffer)].map((b) => b.toString(16).padStart(2, "0"));
    assert.equal(got.join(""), hex, `length ${len}`);
  }
});

Deno.test("replay cache: a c0 is remembered at least 120 s and at most 150 s", () => {
  const cache = new ReplayCache(key(), 1000, 120, 30);
  const [a, b, c] = randomC0s(3);
  cache.add(a, 1000); // slot 33: [990, 1020)
  cache.add(b, 1019.999); // the same slot's last instant
  cache.add(c, 1020); // the next slot
  for (const t of [1000, 1119.999, 1120, 1139.999]) assert.ok(cache.has(a, t), `a at ${t}`);
  for (const t of [1139.999, 1140 - 1e-6]) assert.ok(cache.has(b, t), `b at ${t}`);
  assert.ok(cache.has(c, 1169.999));
  assert.ok(!cache.has(a, 1140), "its slot ends at 1020: gone 120 s later");
  assert.ok(!cache.has(b, 1140), "b was in a's slot");
  assert.ok(cache.has(c, 1140), "c is in the next slot");
  assert.equal(cache.size, 1);
  assert.ok(!cache.has(c, 1170));
  assert.equal(cache.size, 0);
  // any arrival time: found at +120 s, gone at +150 s
  const c0s = randomC0s(200);
  const t0 = 5000;
  for (let i = 0; i < c0s.length; i++) {
    const fresh = new ReplayCache(key(), 10, 120, 30);
    const t = t0 + i * 0.37;
    fresh.add(c0s[i], t);
    assert.ok(fresh.has(c0s[i], t + 120), `arrived at ${t}`);
    assert.ok(!fresh.has(c0s[i], t + 150), `arrived at ${t}`);
  }
});

Deno.test("replay cache: replays are found in every live generation", () => {
  const cache = new ReplayCache(key(), 100_000, 120, 30);
  const c0s = randomC0s(5 * 1000);
  // 1000 handshakes in each of 5 slots: 0, 30, 60, 90, 120 s
  c0s.forEach((c0, i) => assert.ok(cache.add(c0, Math.floor(i / 1000) * 30 + (i % 1000) * 0.02)));
  assert.equal(cache.size, 5000);
  assert.ok(c0s.every((c0) => cache.has(c0, 149.9)), "all 5 generations at 149.9 s");
  const others = randomC0s(5000);
  assert.ok(others.every((c0) => !cache.has(c0, 149.9)), "nothing else");
  assert.ok(c0s.slice(0, 1000).every((c0) => !cache.has(c0, 150)), "the first slot ends at 150 s");
  assert.ok(c0s.slice(1000).every((c0) => cache.has(c0, 150)));
  assert.equal(cache.size, 4000);
  assert.ok(c0s.slice(4000).every((c0) => cache.has(c0, 269.9)));
  assert.equal(cache.size, 1000);
});

Deno.test("replay cache: grows while it fills, at most 16 bytes of slots per entry", () => {
  const cache = new ReplayCache(key(), 1 << 22, 120, 30);
  const keys = randomKeys(cache, 1 << 20);
  let worst = 0;
  for (let i = 0; i < keys.length; i++) {
    assert.ok(cache.addKey(keys[i], (i / keys.length) * 149));
    if (i >= 1 << 18 && (i & 0xfff) === 0) worst = Math.max(worst, cache.bytes / cache.size);
  }
  const perEntry = cache.bytes / cache.size;
  console.log(`2^20 entries in 5 generations: ${perEntry.toFixed(2)} bytes of slots per entry`);
  assert.ok(perEntry <= 16 && worst <= 16, `${perEntry}, worst ${worst}`);
  for (let i = 0; i < keys.length; i++) assert.ok(cache.hasKey(keys[i], 149));
});

Deno.test("replay cache: full, it refuses and counts, and keeps every entry", () => {
  const cache = new ReplayCache(key(), 3000, 120, 30);
  const c0s = randomC0s(3010);
  for (let i = 0; i < 3000; i++) assert.ok(cache.add(c0s[i], i * 0.01));
  assert.equal(cache.size, cache.capacity);
  for (let i = 3000; i < 3010; i++) assert.ok(!cache.add(c0s[i], 29.99 + (i - 3000)));
  assert.equal(cache.refused, 10);
  assert.ok(c0s.slice(0, 3000).every((c0) => cache.has(c0, 38)), "nothing forgotten");
  assert.ok(!cache.has(c0s[3005], 38), "a refused one is not remembered");
  assert.ok(cache.add(c0s[3005], 150), "room again once the first generation ends");
  assert.ok(cache.has(c0s[3005], 150));
});

Deno.test("replay cache: false positives over millions of random keys", () => {
  const cache = new ReplayCache(key(), 1 << 21, 120, 30);
  const stored = randomKeys(cache, 1 << 20);
  for (let i = 0; i < stored.length; i++) cache.addKey(stored[i], i / 10_000);
  const probes = 4_000_000;
  let falsePositives = 0;
  const next = c0Stream();
  for (let i = 0; i < probes; i++) if (cache.hasKey(cache.keyOf(next()), 120)) falsePositives++;
  // Expected 2^20 * 4e6 / 2^53 = 0.0005: a single one means the fingerprints are not 53 bits.
  console.log(`${falsePositives} false positives in ${probes} lookups at 2^20 entries`);
  assert.equal(falsePositives, 0);
});

Deno.test("replay cache: ciphertexts that share all but a few bits spread like random ones", () => {
  // An attacker picks c0s that differ in a few bits only; without the key the home slots
  // would be near each other. With it, they land as evenly as random keys and lookups stay short.
  const cache = new ReplayCache(key(), 1 << 20, 120, 30);
  const bins = new Uint32Array(4096);
  const c0 = new Uint8Array(194);
  const n = 1 << 18;
  const chosen = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    c0[0] = i & 0xff; // counters in the first and last bytes of the 32 hashed
    c0[31] = (i >>> 8) & 0xff;
    c0[15] = i >>> 16;
    chosen[i] = cache.keyOf(c0);
    bins[(chosen[i] >>> 0) >>> 20]++;
  }
  // Each of 4096 bins expects 64 (σ = 8): a bin above 64 + 8σ would be a sign of structure.
  const most = Math.max(...bins);
  assert.ok(most < 64 + 64, `the fullest bin holds ${most}`);
  assert.equal(new Set(chosen).size, n, "no two share a fingerprint");
  // The same number of random keys in a second cache; lookups of stored and of unknown keys.
  for (let i = 0; i < n; i++) cache.addKey(chosen[i], 10);
  const control = new ReplayCache(key(), 1 << 20, 120, 30);
  const random = randomKeys(control, n);
  for (let i = 0; i < n; i++) control.addKey(random[i], 10);
  const unknown = randomKeys(cache, n);
  const unknownControl = randomKeys(control, n);
  const time = (c: ReplayCache, stored: Float64Array, absent: Float64Array) => {
    const t = performance.now();
    for (let r = 0; r < 4; r++) {
      for (let i = 0; i < n; i++) if (!c.hasKey(stored[i], 10)) throw new Error("lost");
      for (let i = 0; i < n; i++) if (c.hasKey(absent[i], 10)) throw new Error("false positive");
    }
    return performance.now() - t;
  };
  // alternated, the best of 3 each: the machine is shared
  let chosenMs = Infinity, randomMs = Infinity;
  for (let round = 0; round < 3; round++) {
    randomMs = Math.min(randomMs, time(control, random, unknownControl));
    chosenMs = Math.min(chosenMs, time(cache, chosen, unknown));
  }
  console.log(
    `lookups with chosen keys ${chosenMs.toFixed(1)} ms, random ${randomMs.toFixed(1)} ms`,
  );
  assert.ok(chosenMs < 3 * randomMs + 20, `${chosenMs} ms vs ${randomMs} ms`);
});

Deno.test("replay capacity: covers every worker at full speed for an entry's longest life", () => {
  assert.equal(replayCapacityFor(2), 2 * 10_000 * 150);
  assert.equal(replayCapacityFor(0), replayCapacityFor(1));
  // What lib/server/daemon.ts measures on our 2-core lab machine (~4,500/s) fits many times.
  assert.ok(replayCapacityFor(2) >= 4 * 4500 * 150);
});

Deno.test("replay cache: valid handshakes at the bound's full rate for 5 minutes never fill it", () => {
  // One worker's bound, every handshake valid: the most a sender of valid handshakes can cause.
  const rate = HANDSHAKES_PER_SECOND_PER_WORKER;
  const cache = new ReplayCache(key(), replayCapacityFor(1), 120, 30);
  const next = c0Stream();
  let most = 0;
  for (let i = 0; i < rate * 300; i++) {
    assert.ok(cache.addKey(cache.keyOf(next()), 7 + i / rate), `refused at ${i / rate} s`);
    most = Math.max(most, cache.size);
  }
  assert.equal(cache.refused, 0);
  console.log(`at most ${most} entries of ${cache.capacity}, ${cache.bytes / cache.size} B each`);
  assert.ok(most <= cache.capacity);
});
