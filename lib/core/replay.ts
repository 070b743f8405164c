// Remembers the McEliece ciphertext (c0) of every accepted handshake for 120 s, so that a
// recorded handshake cannot open a second session. Bounded: under a flood the oldest entries
// go first, and every accepted handshake already cost the sender a full encapsulation.

import { EPOCH_LIFETIME_SECONDS } from "./constants.ts";

/** A map key for a c0: 32 bytes of a 194-byte ciphertext are as unique as the whole. */
export function replayKey(c0: Uint8Array): string {
  let s = "";
  for (let i = 0; i < 32 && i < c0.length; i++) s += String.fromCharCode(c0[i]);
  return s + String(c0.length);
}

export class ReplayCache {
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly maxEntries = 1 << 16,
    private readonly lifetime = EPOCH_LIFETIME_SECONDS,
  ) {}

  has(c0: Uint8Array, now: number): boolean {
    this.prune(now);
    return this.seen.has(replayKey(c0));
  }

  add(c0: Uint8Array, now: number): void {
    this.prune(now);
    if (this.seen.size >= this.maxEntries) {
      const oldest = this.seen.keys().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    this.seen.set(replayKey(c0), now + this.lifetime);
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
}
