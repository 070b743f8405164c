// The supervisor's half of the DNS path: answers move from the kernel's queue to the worker,
// its verdicts move back to the queue. The supervisor never parses an answer, only the queue's
// framing and the channel's, but it does not trust the worker either (issue 9): a replacement
// is accepted only for an answer still waiting, and only if it is an edit of that packet (same
// length, same IP header, same ports). Anything else is dropped, counted and logged at a
// bounded rate, and nothing the worker sends can make this code throw.
//
// An answer that cannot be judged — the worker is busy past the time allowed, its backlog is
// full, the channel is full — is dropped rather than passed unchanged: an unedited answer would
// hand an application the real address of an announced server. The resolver library asks
// again. (With no worker at all the rule's bypass lets DNS through: see runtime/firewall.ts.)

import { decodeChannelMessage, encodeDns } from "./messages.ts";
import { PROTO_TCP, PROTO_UDP } from "../core/ip.ts";
import { DropCounters, type Logger, LogLimiter } from "../core/log.ts";

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

export interface DnsRelayLimits {
  /** Seconds the worker has to judge an answer. */
  verdictSeconds: number;
  /** Answers waiting for the worker at most (default 1024). */
  maxPending?: number;
  /** The largest packet sent to the worker: its verdict, 6 bytes longer, must fit one channel
   * message, and a verdict's payload at most 65,531 bytes (netlink attribute length). */
  maxPacket: number;
}

interface Pending {
  at: number;
  /** IP header and the transport ports of the queued packet. */
  head: Uint8Array;
  length: number;
}

/** The largest packet whose replacement a verdict can carry. */
export const MAX_REPLACEMENT = 0xffff - 4;

export class DnsRelay {
  readonly drops = new DropCounters();
  /** Answers with the worker, by packet id. Emptied by verdicts and timeouts; bounded. */
  private readonly pending = new Map<number, Pending>();
  private readonly limiter: LogLimiter;
  private readonly maxPending: number;

  constructor(
    private readonly queue: AnswerQueue,
    private readonly channel: WorkerChannel,
    private readonly now: () => number,
    private readonly limits: DnsRelayLimits,
    private readonly log: Logger,
  ) {
    this.limiter = new LogLimiter(log, now);
    this.maxPending = limits.maxPending ?? 1024;
  }

  /** Every answer queued now goes to the worker; one that cannot go is dropped. */
  relayAnswers(): void {
    for (const p of this.queue.receive()) {
      try {
        this.forward(p);
      } catch (e) {
        this.refuse("dns-forward-failed", (e as Error).message);
        this.tryVerdict(p.id, false);
      }
    }
  }

  private forward(p: { id: number; payload: Uint8Array; truncated: boolean }): void {
    if (p.truncated || !isUdpOrTcp(p.payload)) {
      // Not a whole IPv4 UDP/TCP packet: nothing the worker could edit.
      this.queue.verdict(p.id, true);
      return;
    }
    if (p.payload.length > this.limits.maxPacket) {
      // Its replacement could not come back: never seen edited, so never passed.
      this.queue.verdict(p.id, false);
      return this.refuse("dns-too-large", `${p.payload.length}-byte packet`);
    }
    if (this.pending.size >= this.maxPending) {
      this.queue.verdict(p.id, false);
      return this.refuse("dns-backlog-full", `${this.pending.size} answers wait for the worker`);
    }
    if (!this.channel.trySend(encodeDns(p.id, p.payload))) {
      this.queue.verdict(p.id, false);
      return this.refuse("dns-channel-full", "the worker is not reading");
    }
    const hl = (p.payload[0] & 0x0f) * 4;
    this.pending.set(p.id, {
      at: this.now(),
      head: p.payload.slice(0, hl + 4),
      length: p.payload.length,
    });
  }

  /** Applies the worker's verdicts; false once the worker has closed the channel. */
  applyVerdicts(): boolean {
    for (;;) {
      let m: Uint8Array | null | undefined;
      try {
        m = this.channel.tryRecv();
      } catch (e) {
        // A message over the channel's limit (EMSGSIZE) is already discarded by the kernel.
        this.refuse("verdict-unreadable", (e as Error).message);
        continue;
      }
      if (m === undefined) return true;
      if (m === null) return false;
      try {
        this.applyVerdict(m);
      } catch (e) {
        this.refuse("verdict-failed", (e as Error).message);
      }
    }
  }

  private applyVerdict(m: Uint8Array): void {
    const msg = decodeChannelMessage(m);
    if (msg?.type !== "verdict") return this.refuse("verdict-malformed", `${m.length} bytes`);
    const original = this.pending.get(msg.id);
    if (original === undefined) return this.refuse("verdict-unknown-id", `packet id ${msg.id}`);
    this.pending.delete(msg.id);
    const r = msg.replacement;
    if (r === null) return this.queue.verdict(msg.id, true);
    const why = replacementProblem(original, r);
    if (why !== null) {
      // The worker asked for something an edit never produces: the answer goes nowhere.
      this.queue.verdict(msg.id, false);
      return this.refuse("verdict-refused", why);
    }
    this.queue.verdict(msg.id, true, r);
  }

  /** Answers the worker has not judged within the time allowed are dropped. */
  dropOverdue(): void {
    const limit = this.now() - this.limits.verdictSeconds;
    for (const [id, p] of this.pending) {
      if (p.at < limit) {
        this.pending.delete(id);
        this.tryVerdict(id, false);
        this.refuse("verdict-timeout", `packet id ${id} not judged in time`);
      }
    }
  }

  /** On the way out: every answer still waiting passes (the worker is gone with its edits). */
  passAll(): void {
    for (const id of this.pending.keys()) this.tryVerdict(id, true);
    this.pending.clear();
  }

  private refuse(reason: string, detail: string): void {
    this.drops.count(reason);
    this.limiter.line(
      "warn",
      reason,
      () => `${reason}: ${detail} (${this.drops.get(reason)} in all)`,
    );
  }

  private tryVerdict(id: number, accept: boolean): void {
    try {
      this.queue.verdict(id, accept);
    } catch (e) {
      this.drops.count("verdict-send-failed");
      this.limiter.line("warn", "verdict-send-failed", () => `verdict: ${(e as Error).message}`);
    }
  }
}

/** True for a whole IPv4 UDP or TCP packet with its ports (the only packets we queue). */
function isUdpOrTcp(p: Uint8Array): boolean {
  if (p.length < 20 || (p[0] >> 4) !== 4) return false;
  const hl = (p[0] & 0x0f) * 4;
  return hl >= 20 && p.length >= hl + 4 && (p[9] === PROTO_UDP || p[9] === PROTO_TCP);
}

/**
 * Why a replacement is not an edit of the queued packet, or null when it is one: the worker's
 * edits keep the length, the whole IP header (addresses, protocol) and the ports, and change
 * only the DNS message (and the transport checksum).
 */
export function replacementProblem(
  original: { head: Uint8Array; length: number },
  r: Uint8Array,
): string | null {
  if (r.length !== original.length) return `length ${r.length}, queued ${original.length}`;
  if (r.length > MAX_REPLACEMENT) return `${r.length} bytes do not fit a verdict`;
  const h = original.head;
  for (let i = 0; i < h.length; i++) {
    if (r[i] !== h[i]) return `byte ${i} of the IP header or ports differs`;
  }
  return null;
}
