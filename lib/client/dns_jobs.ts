// DNS answers waiting for the client worker's rewriter, worked off in slices. The worker has one
// thread, which also carries the tunnel: an answer is edited in steps (a bounded number of
// records each, lib/core/dns_answer.ts), and one slice runs steps only until its time budget is
// spent; the rest waits for a later turn of the event loop, so tunnel packets go through in
// between (issue 9: a maximal answer costs the tunnel at most a fraction of a millisecond).

import type { DnsRewriter, DnsRewriteResult } from "../core/dns_rewrite.ts";
import type { DropCounters } from "../core/log.ts";

export interface DnsJobsOptions {
  /** Time one slice may take, in ms (default 0.25). */
  sliceMs?: number;
  /** Answers waiting at most; more are refused (default 256). */
  maxQueued?: number;
}

interface Job {
  id: number;
  steps: Generator<void, DnsRewriteResult, void>;
}

export class DnsJobs {
  readonly #jobs: Job[] = [];
  readonly #sliceMs: number;
  readonly #max: number;
  #scheduled = false;
  #closed = false;
  /** Slices run, and slices that left work for a later turn (for the status document). */
  readonly stats = { slices: 0, deferred: 0, longestSliceMs: 0, slicesOver1ms: 0 };

  constructor(
    private readonly rewriter: DnsRewriter,
    private readonly done: (id: number, result: DnsRewriteResult) => void,
    private readonly drops: DropCounters,
    private readonly clock: () => number = () => performance.now(),
    opts: DnsJobsOptions = {},
  ) {
    this.#sliceMs = opts.sliceMs ?? 0.25;
    this.#max = opts.maxQueued ?? 256;
  }

  get queued(): number {
    return this.#jobs.length;
  }

  /** Queues one answer (the bytes must stay untouched until it is done); false when full. */
  add(id: number, packet: Uint8Array): boolean {
    // Nearly every answer needs no edit: its verdict goes back at once, whatever is queued.
    const quick = this.rewriter.quick(packet);
    if (quick !== null) {
      this.done(id, quick);
      return true;
    }
    if (this.#jobs.length >= this.#max) {
      this.drops.count("dns-jobs-full");
      return false;
    }
    this.#jobs.push({ id, steps: this.rewriter.processInSteps(packet) });
    return true;
  }

  /** Works for at most one slice now; schedules another turn if work is left. */
  slice(): void {
    if (this.#closed) return;
    this.stats.slices++;
    const start = this.clock();
    const end = start + this.#sliceMs;
    while (this.#jobs.length > 0) {
      const job = this.#jobs[0];
      let r: IteratorResult<void, DnsRewriteResult>;
      try {
        r = job.steps.next();
      } catch {
        // processInSteps never throws; should it, the answer is not judged (the supervisor
        // drops it at its timeout).
        this.#jobs.shift();
        this.drops.count("dns-job-failed");
        continue;
      }
      if (r.done) {
        this.#jobs.shift();
        this.done(job.id, r.value);
      }
      if (this.clock() >= end) break;
    }
    const took = this.clock() - start;
    if (took > this.stats.longestSliceMs) this.stats.longestSliceMs = took;
    if (took > 1) this.stats.slicesOver1ms++;
    if (this.#jobs.length > 0) {
      this.stats.deferred++;
      this.#schedule();
    }
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setTimeout(() => {
      this.#scheduled = false;
      this.slice();
    }, 0);
  }

  close(): void {
    this.#closed = true;
    this.#jobs.length = 0;
  }
}
