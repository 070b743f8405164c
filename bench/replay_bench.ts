// The replay cache (lib/core/replay.ts) against the Map of strings it replaced: bytes per entry
// after a full GC, and the cost of what a handshake does with it (make the key, look it up, file
// it in flight, look it up again and add it), with the cache already holding N entries.
//
//   deno task bench:replay     (deno run --v8-flags=--expose-gc bench/replay_bench.ts)

import { ReplayCache } from "../lib/core/replay.ts";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --v8-flags=--expose-gc (deno task bench:replay)");

/** The Map-based cache this replaced (main at 101d0e4), kept here as the baseline. */
class MapReplayCache {
  private readonly seen = new Map<string, number>();
  constructor(private readonly maxEntries: number, private readonly lifetime = 120) {}
  keyOf(c0: Uint8Array): string {
    const head = c0.subarray(0, 32) as unknown as number[];
    return String.fromCharCode.apply(null, head) + String(c0.length);
  }
  hasKey(key: string, now: number): boolean {
    this.prune(now);
    return this.seen.has(key);
  }
  addKey(key: string, now: number): boolean {
    this.prune(now);
    if (this.seen.size >= this.maxEntries) return false;
    this.seen.set(key, now + this.lifetime);
    return true;
  }
  prune(now: number): void {
    for (const [k, expiry] of this.seen) {
      if (expiry > now) break;
      this.seen.delete(k);
    }
  }
}

interface Cache<K> {
  keyOf(c0: Uint8Array): K;
  hasKey(key: K, now: number): boolean;
  addKey(key: K, now: number): boolean;
}

const kinds = {
  "Map of strings (before)": (max: number) => new MapReplayCache(max),
  "generations of fingerprints (after)": (max: number) =>
    new ReplayCache(crypto.getRandomValues(new Uint8Array(8)), max),
};

/** A fresh random-looking 194-byte c0 per call: random bytes with a counter in front. */
function c0Stream(): () => Uint8Array {
  const c0 = crypto.getRandomValues(new Uint8Array(194));
  const view = new DataView(c0.buffer);
  let i = 0;
  return () => {
    if (i % 4096 === 0) crypto.getRandomValues(c0.subarray(4, 32));
    view.setUint32(0, i++, true);
    return c0;
  };
}

/**
 * Fills a cache with n entries that arrived evenly over the 119 s before `now`: all alive, so
 * that the Map's first lookup deletes nothing (deleting a fifth of it at once left that many
 * holes at the Map's front, which every later prune() walked over: ~30 µs a lookup at 2^18).
 */
function fill<K>(cache: Cache<K>, n: number, now: number): void {
  const next = c0Stream();
  for (let i = 0; i < n; i++) {
    if (!cache.addKey(cache.keyOf(next()), now - 119 + (i / n) * 119)) throw new Error("full");
  }
}

/** Holds the cache just measured, so nothing frees it before the measurement. */
let _kept: unknown;

function memoryBytes(): number {
  const m = Deno.memoryUsage();
  return m.heapUsed + m.external;
}

/** A full GC, after the array buffers' backing stores of earlier ones were freed. */
async function fullGc(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc!();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function bytesPerEntry(make: (max: number) => Cache<unknown>, n: number): Promise<number> {
  await fullGc();
  const before = memoryBytes();
  const cache = make(2 * n);
  fill(cache, n, 1000);
  await fullGc();
  const after = memoryBytes();
  _kept = cache; // alive until measured
  return (after - before) / n;
}

/** ns per handshake's use of the cache (as lib/server/device.ts does it), best of 5 rounds. */
function handshakePathNs(make: (max: number) => Cache<unknown>, n: number): number {
  const cache = make(4 * n);
  const now = 1000;
  fill(cache, n, now);
  const inFlight = new Set<unknown>();
  const next = c0Stream();
  const ops = 1 << 16;
  let best = Infinity;
  for (let round = 0; round < 6; round++) {
    const t = performance.now();
    for (let i = 0; i < ops; i++) {
      const key = cache.keyOf(next());
      if (cache.hasKey(key, now) || inFlight.has(key)) throw new Error("false positive");
      inFlight.add(key);
      inFlight.delete(key);
      if (cache.hasKey(key, now)) throw new Error("false positive");
      if (!cache.addKey(key, now)) throw new Error("full");
    }
    if (round > 0) best = Math.min(best, ((performance.now() - t) * 1e6) / ops);
  }
  return best;
}

/** ns per lookup of an unknown c0 (key and hasKey), best of 5 rounds. */
function lookupNs(make: (max: number) => Cache<unknown>, n: number): number {
  const cache = make(2 * n);
  fill(cache, n, 1000);
  const next = c0Stream();
  const ops = 1 << 17;
  let best = Infinity;
  for (let round = 0; round < 6; round++) {
    const t = performance.now();
    for (let i = 0; i < ops; i++) {
      if (cache.hasKey(cache.keyOf(next()), 1000)) throw new Error("false positive");
    }
    if (round > 0) best = Math.min(best, ((performance.now() - t) * 1e6) / ops);
  }
  return best;
}

const table: string[][] = [["cache", "entries", "bytes/entry", "lookup ns", "handshake path ns"]];
const sizes = {
  "Map of strings (before)": [1 << 18, 1 << 20],
  "generations of fingerprints (after)": [1 << 18, 1 << 20, 3_000_000, 1 << 22, 1 << 24],
};
for (const [name, make] of Object.entries(kinds)) {
  for (const n of sizes[name as keyof typeof sizes]) {
    const bytes = await bytesPerEntry(make, n);
    gc();
    _kept = null;
    const lookup = lookupNs(make, n);
    gc();
    const path = handshakePathNs(make, n);
    gc();
    table.push([
      name,
      Number.isInteger(Math.log2(n)) ? `2^${Math.log2(n)}` : String(n),
      bytes.toFixed(1),
      lookup.toFixed(0),
      path.toFixed(0),
    ]);
  }
}
const widths = table[0].map((_, c) => Math.max(...table.map((r) => r[c].length)));
for (const row of table) console.log(row.map((cell, c) => cell.padEnd(widths[c])).join("  "));
