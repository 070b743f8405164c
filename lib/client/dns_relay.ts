// The supervisor's half of the DNS path: answers move from the kernel's queue to the worker,
// its verdicts move back to the queue, and an answer the worker has not judged in time passes
// unchanged (fail open). The supervisor never parses an answer, only the queue's framing and
// the channel's.

import { decodeChannelMessage, encodeDns } from "./messages.ts";

/** The netfilter queue, as the relay uses it (ffi/nfqueue.ts). */
export interface AnswerQueue {
  receive(): { id: number; payload: Uint8Array; truncated: boolean }[];
  verdict(id: number, accept: boolean, payload?: Uint8Array): void;
}

/** The channel to the worker (ffi/spawn.ts SeqPacketChannel). */
export interface WorkerChannel {
  trySend(message: Uint8Array): boolean;
  /** A message, undefined when none is waiting, null once the worker closed its end. */
  tryRecv(): Uint8Array | null | undefined;
}

export class DnsRelay {
  /** Answers with the worker: id → when they went (seconds). Emptied by verdicts and timeouts. */
  private readonly pending = new Map<number, number>();

  constructor(
    private readonly queue: AnswerQueue,
    private readonly channel: WorkerChannel,
    private readonly now: () => number,
    private readonly verdictSeconds: number,
  ) {}

  /** Every answer queued now goes to the worker; one that cannot go passes unchanged. */
  relayAnswers(): void {
    for (const p of this.queue.receive()) {
      if (p.truncated || !this.channel.trySend(encodeDns(p.id, p.payload))) {
        this.queue.verdict(p.id, true);
        continue;
      }
      this.pending.set(p.id, this.now());
    }
  }

  /** Applies the worker's verdicts; false once the worker has closed the channel. */
  applyVerdicts(): boolean {
    for (;;) {
      const m = this.channel.tryRecv();
      if (m === undefined) return true;
      if (m === null) return false;
      const msg = decodeChannelMessage(m);
      if (msg?.type !== "verdict" || !this.pending.delete(msg.id)) continue;
      this.queue.verdict(msg.id, true, msg.replacement ?? undefined);
    }
  }

  /** Answers the worker has not judged within the time allowed pass unchanged. */
  passOverdue(): void {
    const limit = this.now() - this.verdictSeconds;
    for (const [id, at] of this.pending) {
      if (at < limit) {
        this.pending.delete(id);
        this.queue.verdict(id, true);
      }
    }
  }

  /** On the way out: every answer still waiting passes. */
  passAll(): void {
    for (const id of this.pending.keys()) this.queue.verdict(id, true);
    this.pending.clear();
  }
}
