// What a flood of initiations meets before any decapsulation: a token bucket per source address
// (a few initiations per second each, a small burst, in the spirit of WireGuard's rate limiter)
// and a bounded queue whose entries expire. Decapsulation is the one expensive step a stranger
// can cause, so both run first, and work that could no longer be useful is never started.
// Pure: time comes in as an argument (seconds).

/** Per-source-address token buckets in a bounded table; the least recently seen go first. */
export class InitiationLimiter {
  private readonly buckets = new Map<number, { tokens: number; last: number }>();

  constructor(
    /** Initiations per second each address earns. */
    private readonly rate = 3,
    /** The most an address may send at once after a quiet spell. */
    private readonly burst = 6,
    /** Addresses tracked at once (each entry some 80 bytes). */
    private readonly maxEntries = 1 << 16,
  ) {}

  /** True when `host` may send one more initiation now (and takes its token). */
  allow(host: number, now: number): boolean {
    let b = this.buckets.get(host);
    if (b) {
      this.buckets.delete(host); // re-inserted below: Map order is recency order
      b.tokens = Math.min(this.burst, b.tokens + (now - b.last) * this.rate);
      b.last = now;
    } else {
      // A full table forgets its least recently seen address; that address starts over with a
      // full bucket, which costs us at most one burst of handshakes per eviction.
      if (this.buckets.size >= this.maxEntries) {
        const oldest = this.buckets.keys().next().value;
        if (oldest !== undefined) this.buckets.delete(oldest);
      }
      b = { tokens: this.burst, last: now };
    }
    this.buckets.set(host, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  get size(): number {
    return this.buckets.size;
  }
}

interface Queued<T> {
  item: T;
  at: number;
}

/**
 * A bounded FIFO of handshakes waiting for a decapsulation slot. Full: the newcomer is refused
 * (what is queued will be served in time). take() skips entries older than `maxAge`: their
 * client's early packets are gone and it has likely retried, so decapsulating them is waste.
 */
export class HandshakeQueue<T> {
  private items: (Queued<T> | undefined)[];
  private head = 0;
  private count = 0;

  constructor(readonly capacity: number, readonly maxAge: number) {
    this.items = new Array(capacity);
  }

  get length(): number {
    return this.count;
  }

  get full(): boolean {
    return this.count >= this.capacity;
  }

  /** False when full: the caller drops `item`. */
  push(item: T, now: number): boolean {
    if (this.count >= this.capacity) return false;
    this.items[(this.head + this.count) % this.capacity] = { item, at: now };
    this.count++;
    return true;
  }

  /** The oldest entry still young enough, or null; `expired` is called for each one skipped. */
  take(now: number, expired: (item: T) => void): T | null {
    while (this.count > 0) {
      const q = this.items[this.head]!;
      this.items[this.head] = undefined;
      this.head = (this.head + 1) % this.capacity;
      this.count--;
      if (now - q.at <= this.maxAge) return q.item;
      expired(q.item);
    }
    return null;
  }
}
