// Remembers the McEliece ciphertext (c0) of every accepted handshake for 120 s, so that a
// recorded handshake cannot open a second session. Bounded, and it fails closed: when full it
// refuses new handshakes rather than forget an entry whose handshake could then be replayed
// (rebuilding a session with the same keys). Every entry cost its sender a full handshake.
//
// Size: entries arrive no faster than the server completes handshakes, which admission control
// caps (about 2,600/s with native KEMs on two cores). 2^19 entries hold 120 s of 4,300/s, so a
// sender who completes valid handshakes from many forged addresses meets the full queue, never
// a full cache: it cannot lock real clients out for the 120 s an entry lives. A full cache
// measured 42 MiB of heap, reached only under sustained full load.

import { EPOCH_LIFETIME_SECONDS } from "./constants.ts";

/** A map key for a c0: 32 bytes of a 194-byte ciphertext are as unique as the whole. */
export function replayKey(c0: Uint8Array): string {
  // One flat string (a character at a time built a chain of 32 pieces, flattened on lookup).
  const head = c0.subarray(0, 32) as unknown as number[];
  return String.fromCharCode.apply(null, head) + String(c0.length);
}

export class ReplayCache {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly maxEntries = 1 << 19,
    private readonly lifetime = EPOCH_LIFETIME_SECONDS,
  ) {}

  has(c0: Uint8Array, now: number): boolean {
    return this.hasKey(replayKey(c0), now);
  }

  /** has() for a c0 whose replayKey() the caller already made. */
  hasKey(key: string, now: number): boolean {
    this.prune(now);
    return this.seen.has(key);
  }

  /** Remembers c0; false (and nothing remembered) when the cache is full. */
  add(c0: Uint8Array, now: number): boolean {
    return this.addKey(replayKey(c0), now);
  }

  /** add() for a c0 whose replayKey() the caller already made. */
  addKey(key: string, now: number): boolean {
    this.prune(now);
    if (this.seen.size >= this.maxEntries) return false;
    this.seen.set(key, now + this.lifetime);
    return true;
  }

  /** Entries are in insertion order, so expired ones are at the front. */
  prune(now: number): void {
    for (const [k, expiry] of this.seen) {
      if (expiry > now) break;
      this.seen.delete(k);
    }
  }

  get size(): number {
    return this.seen.size;
  }

  get capacity(): number {
    return this.maxEntries;
  }
}
