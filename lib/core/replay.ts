// Remembers the McEliece ciphertext (c0) of every accepted handshake for at least 120 s, so that
// a recorded handshake cannot open a second session. Bounded, and it fails closed: when full it
// refuses new handshakes rather than forget an entry whose handshake could then be replayed
// (rebuilding a session with the same keys = keystream reuse). Every entry cost its sender a
// full, valid handshake.
//
// Layout: one generation per 30 s slot of arrival, each an open-addressing set (linear probing)
// of 53-bit fingerprints in a Float64Array, grown by half when 3/4 full, so a slot costs 10.7-16
// bytes per entry. A generation is dropped whole once its newest entry is 120 s old: an entry
// lives 120-150 s, and a lookup checks the 5 live generations.
//
// Fingerprints: HalfSipHash-2-4 (64-bit output) of c0's first 32 bytes under a random key that
// the caller draws. Whoever sends handshakes cannot compute it, so they cannot aim entries at one
// probe chain, nor make a real client's c0 look like a replay. A real handshake is refused by
// mistake only if its fingerprint equals a remembered one: with n entries, n / 2^53 per
// handshake. Full, with 2 crypto workers: 3 M entries, at most 48 MB, 3.3e-10; with 16 (the
// daemon's most): 24 M entries, at most 384 MB, 2.7e-9.

import { EPOCH_LIFETIME_SECONDS, EPOCH_SECONDS } from "./constants.ts";

/**
 * Handshakes one crypto worker can possibly complete per second: 2.5x what one does on our
 * 2-core lab machine with native KEMs (the whole responder ~0.25 ms, lib/server/daemon.ts), so a
 * core 2.5x as fast still fits. The whole server there completes ~4,000-4,500/s with 2 workers
 * (bench:handshakes), 4.4x below this bound.
 */
export const HANDSHAKES_PER_SECOND_PER_WORKER = 10_000;

/** Bytes of c0 hashed: 32 bytes of a 194-byte ciphertext are as unique as the whole. */
const KEY_BYTES = 32;
/** A slot grows by half once more than 3/4 full. */
const MAX_LOAD = 0.75;
const MIN_SLOTS = 1024;
const TWO_32 = 2 ** 32;
/** The fingerprint's top 21 bits come from the hash's second word (53 bits fit a double). */
const HIGH_MASK = 0x1fffff;

/**
 * The most entries that can be live at once with `workers` crypto workers completing
 * handshakes at full speed: entries live at most lifetime + one slot.
 */
export function replayCapacityFor(
  workers: number,
  lifetime = EPOCH_LIFETIME_SECONDS,
  slotSeconds = EPOCH_SECONDS,
): number {
  return Math.max(1, workers) * HANDSHAKES_PER_SECOND_PER_WORKER * (lifetime + slotSeconds);
}

/**
 * HalfSipHash-2-4 with a 64-bit output (Aumasson & Bernstein), of bytes[start, start + length)
 * under the key (k0, k1): the two output words, low first, in `out`.
 *
 * The SipRound is written out twice on purpose (message blocks; last block and finalizations):
 * one loop over every step, or a rounds helper on a typed array or on module variables, measured
 * 25-33 % slower per 32-byte hash (70 → 87-93 ns, same run) and the handshake path of
 * bench:replay slower with it.
 */
export function halfSipHash64(
  bytes: Uint8Array,
  start: number,
  length: number,
  k0: number,
  k1: number,
  out: Uint32Array,
): void {
  let v0 = k0 | 0;
  let v1 = (k1 ^ 0xee) | 0;
  let v2 = (0x6c796765 ^ k0) | 0;
  let v3 = (0x74656462 ^ k1) | 0;
  const end = start + length - (length & 3);
  let i = start;
  for (; i < end; i += 4) {
    const m = bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
    v3 ^= m;
    for (let r = 0; r < 2; r++) {
      v0 = (v0 + v1) | 0;
      v1 = (v1 << 5) | (v1 >>> 27);
      v1 ^= v0;
      v0 = (v0 << 16) | (v0 >>> 16);
      v2 = (v2 + v3) | 0;
      v3 = (v3 << 8) | (v3 >>> 24);
      v3 ^= v2;
      v0 = (v0 + v3) | 0;
      v3 = (v3 << 7) | (v3 >>> 25);
      v3 ^= v0;
      v2 = (v2 + v1) | 0;
      v1 = (v1 << 13) | (v1 >>> 19);
      v1 ^= v2;
      v2 = (v2 << 16) | (v2 >>> 16);
    }
    v0 ^= m;
  }
  let b = length << 24;
  const left = length & 3;
  if (left >= 3) b |= bytes[i + 2] << 16;
  if (left >= 2) b |= bytes[i + 1] << 8;
  if (left >= 1) b |= bytes[i];
  // The message rounds for the last block, then the two finalizations of 4 rounds each.
  let rounds = 2;
  v3 ^= b;
  for (let part = 0; part < 3; part++) {
    for (let r = 0; r < rounds; r++) {
      v0 = (v0 + v1) | 0;
      v1 = (v1 << 5) | (v1 >>> 27);
      v1 ^= v0;
      v0 = (v0 << 16) | (v0 >>> 16);
      v2 = (v2 + v3) | 0;
      v3 = (v3 << 8) | (v3 >>> 24);
      v3 ^= v2;
      v0 = (v0 + v3) | 0;
      v3 = (v3 << 7) | (v3 >>> 25);
      v3 ^= v0;
      v2 = (v2 + v1) | 0;
      v1 = (v1 << 13) | (v1 >>> 19);
      v1 ^= v2;
      v2 = (v2 << 16) | (v2 >>> 16);
    }
    if (part === 0) {
      v0 ^= b;
      v2 ^= 0xee;
    } else if (part === 1) {
      out[0] = v1 ^ v3;
      v1 ^= 0xdd;
    } else {
      out[1] = v1 ^ v3;
    }
    rounds = 4;
  }
}

/** Linear-probing set of nonzero fingerprints, grown by half when more than 3/4 full. */
class FingerprintSet {
  slots: Float64Array;
  /** slots.length / 2^32: the home slot of a fingerprint is floor(its low word * scale). */
  private scale: number;
  count = 0;

  constructor(size = MIN_SLOTS) {
    this.slots = new Float64Array(size);
    this.scale = size / TWO_32;
  }

  has(fp: number): boolean {
    const slots = this.slots;
    const size = slots.length;
    let i = Math.floor((fp >>> 0) * this.scale);
    for (;;) {
      const v = slots[i];
      if (v === fp) return true;
      if (v === 0) return false;
      if (++i === size) i = 0;
    }
  }

  /** Adds a fingerprint that is not in the set. */
  add(fp: number): void {
    if (this.count + 1 > this.slots.length * MAX_LOAD) this.grow();
    this.place(fp);
    this.count++;
  }

  private place(fp: number): void {
    const slots = this.slots;
    const size = slots.length;
    let i = Math.floor((fp >>> 0) * this.scale);
    while (slots[i] !== 0) if (++i === size) i = 0;
    slots[i] = fp;
  }

  private grow(): void {
    const old = this.slots;
    const size = Math.ceil(old.length * 1.5);
    this.slots = new Float64Array(size);
    this.scale = size / TWO_32;
    for (let i = 0; i < old.length; i++) if (old[i] !== 0) this.place(old[i]);
  }
}

interface Generation {
  /** floor(arrival / slotSeconds) of every entry in it. */
  slot: number;
  set: FingerprintSet;
}

export class ReplayCache {
  /** Oldest first; at most lifetime / slotSeconds + 1 of them. */
  private readonly generations: Generation[] = [];
  private readonly k0: number;
  private readonly k1: number;
  private readonly hashOut = new Uint32Array(2);
  private entries = 0;
  /** Handshakes refused because the cache was full. */
  refused = 0;

  /**
   * @param hashKey 8 random bytes, drawn by the caller (the core draws no randomness).
   * @param maxEntries entries kept at most: size it with replayCapacityFor().
   */
  constructor(
    hashKey: Uint8Array,
    private readonly maxEntries: number = replayCapacityFor(1),
    private readonly lifetime = EPOCH_LIFETIME_SECONDS,
    private readonly slotSeconds = EPOCH_SECONDS,
  ) {
    if (hashKey.length !== 8) throw new RangeError("the replay hash key is 8 bytes");
    this.k0 = hashKey[0] | (hashKey[1] << 8) | (hashKey[2] << 16) | (hashKey[3] << 24);
    this.k1 = hashKey[4] | (hashKey[5] << 8) | (hashKey[6] << 16) | (hashKey[7] << 24);
  }

  /** The fingerprint of a c0 under this cache's key: a nonzero integer below 2^53. */
  keyOf(c0: Uint8Array): number {
    const out = this.hashOut;
    halfSipHash64(c0, 0, Math.min(KEY_BYTES, c0.length), this.k0, this.k1, out);
    const fp = (out[1] & HIGH_MASK) * TWO_32 + out[0];
    return fp === 0 ? 1 : fp;
  }

  has(c0: Uint8Array, now: number): boolean {
    return this.hasKey(this.keyOf(c0), now);
  }

  /** has() for a c0 whose keyOf() the caller already made. */
  hasKey(key: number, now: number): boolean {
    this.prune(now);
    const gens = this.generations;
    for (let i = gens.length - 1; i >= 0; i--) if (gens[i].set.has(key)) return true;
    return false;
  }

  /** Remembers c0; false (and nothing remembered, counted in `refused`) when full. */
  add(c0: Uint8Array, now: number): boolean {
    return this.addKey(this.keyOf(c0), now);
  }

  /** add() for a c0 whose keyOf() the caller already made and checked with hasKey(). */
  addKey(key: number, now: number): boolean {
    this.prune(now);
    if (this.entries >= this.maxEntries) {
      this.refused++;
      return false;
    }
    const slot = Math.floor(now / this.slotSeconds);
    const gens = this.generations;
    let gen = gens[gens.length - 1];
    // A clock that went back files into the newest generation: kept at least as long.
    if (!gen || gen.slot < slot) {
      gen = { slot, set: new FingerprintSet() };
      gens.push(gen);
    }
    gen.set.add(key);
    this.entries++;
    return true;
  }

  /** Drops the generations whose newest possible entry is `lifetime` old. */
  prune(now: number): void {
    const gens = this.generations;
    while (gens.length > 0 && (gens[0].slot + 1) * this.slotSeconds + this.lifetime <= now) {
      this.entries -= gens.shift()!.set.count;
    }
  }

  /** Entries held, including those of the oldest generation already past their lifetime. */
  get size(): number {
    return this.entries;
  }

  get capacity(): number {
    return this.maxEntries;
  }

  /** Bytes of fingerprint slots allocated. */
  get bytes(): number {
    let n = 0;
    for (const g of this.generations) n += g.set.slots.byteLength;
    return n;
  }
}
