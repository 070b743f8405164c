// Fetching a server's long-term keys: 937 same-size request/response pairs over UDP, each
// response verified against the key hash from DNS the moment it arrives. Sans-IO: the caller
// sends what `poll` returns and feeds back what arrives.
//
// Pacing is a small window-based controller: a window of outstanding requests that grows by one
// per answered request (slow start doubles it each round trip) and halves (at most once a round
// trip) when a request is lost, with a retransmission timeout from measured round trips. Enough
// to fill a fast link without flooding a slow one.
//
// Loss is also seen without waiting for the timeout: key servers answer in order, so a request
// still unanswered when one sent after it has been answered was dropped (the reference's key
// server is one Python thread, and a burst longer than its socket's receive buffer loses its
// tail). Such requests go again at once, as far as the window allows, instead of after
// ≥ 100 ms.

import { KeyTreeAssembler, TREE_SHAPE } from "../core/keytree.ts";
import { parseKeyResponse, staticKeyRequest } from "../core/keymsg.ts";

const INITIAL_WINDOW = 64;
const MAX_WINDOW = 128;
const MIN_WINDOW = 8;
/** How much earlier than an answered request one must have been sent to count as lost (s), at
 * first: requests of one batch share their send time, so they never overtake each other. A
 * network that reorders more shows it (an answer too soon after a resend) and widens it. */
const REORDER_SECONDS = 0.001;
const MAX_REORDER_SECONDS = 0.1;
/** The tail of a batch has no later request to reveal its loss: it counts as lost once the
 * answers stop for this long (or two smoothed round trips, if longer). */
const TAIL_SECONDS = 0.01;
const MIN_RTO = 0.1;
const MAX_RTO = 2;

interface Outstanding {
  depth: number;
  pos: number;
  sentAt: number;
  retries: number;
}

export class KeyFetcher {
  private readonly asm: KeyTreeAssembler;
  private readonly outstanding = new Map<number, Outstanding>();
  private window = INITIAL_WINDOW;
  private slowStart = true;
  private srtt = 0;
  private rttvar = 0;
  private rto = 0.5;
  private depth = 1;
  private queue: number[] = [0];
  /** When the most recently sent request that was answered (first try) went out. */
  private answeredSentAt = -Infinity;
  /** When the window was last halved: losses of requests sent before it count once. */
  private lastCut = -Infinity;
  private reorder = REORDER_SECONDS;
  private minRtt = Infinity;
  /** When the last new part arrived. */
  private lastAnswerAt = -Infinity;
  readonly started: number;
  /** When the last part was verified (same clock), for the log. */
  finished: number | null = null;
  requestsSent = 0;
  responsesAccepted = 0;
  responsesRejected = 0;

  constructor(keyHash: Uint8Array, now: number) {
    this.asm = new KeyTreeAssembler(keyHash);
    this.started = now;
  }

  get complete(): boolean {
    return this.asm.complete;
  }

  keys(): { mceliecePk: Uint8Array; x25519Pk: Uint8Array } {
    return this.asm.keys();
  }

  private static id(depth: number, pos: number): number {
    return depth * 65536 + pos;
  }

  /** Requests to send now: retransmissions first, then new ones while the window allows. */
  poll(now: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    const lost: Outstanding[] = [];
    for (const o of this.outstanding.values()) if (this.isLost(o, now)) lost.push(o);
    if (lost.length > 0) {
      // One cut per round trip: the losses of one window are one congestion event.
      if (lost.some((o) => o.sentAt > this.lastCut)) {
        this.window = Math.max(MIN_WINDOW, Math.floor(this.window / 2));
        this.slowStart = false;
        this.lastCut = now;
      }
      // What is lost is not in flight; resend, oldest first, as far as the window allows.
      lost.sort((a, b) => a.sentAt - b.sentAt);
      const room = Math.max(1, this.window - (this.outstanding.size - lost.length));
      for (const o of lost.slice(0, room)) {
        o.sentAt = now;
        o.retries++;
        out.push(staticKeyRequest(o.depth, o.pos));
      }
    }
    this.advanceDepth();
    while (this.outstanding.size < this.window && this.queue.length > 0) {
      const pos = this.queue.shift()!;
      this.outstanding.set(KeyFetcher.id(this.depth, pos), {
        depth: this.depth,
        pos,
        sentAt: now,
        retries: 0,
      });
      out.push(staticKeyRequest(this.depth, pos));
    }
    this.requestsSent += out.length;
    return out;
  }

  /** Timed out, sent well before a request that has been answered, or left behind by one. */
  private isLost(o: Outstanding, now: number): boolean {
    return now >= this.lostAt(o);
  }

  private lostAt(o: Outstanding): number {
    if (o.sentAt < this.answeredSentAt - this.reorder) return -Infinity;
    const timeout = o.sentAt + this.rto * (1 << Math.min(o.retries, 4));
    if (o.sentAt > this.answeredSentAt) return timeout;
    return Math.min(timeout, this.lastAnswerAt + Math.max(TAIL_SECONDS, 2 * this.srtt));
  }

  /** Moves to the next depth once every node of this one is verified. */
  private advanceDepth(): void {
    while (this.depth < 3 && this.queue.length === 0 && this.outstanding.size === 0) {
      this.depth++;
      this.queue = [...Array(TREE_SHAPE[this.depth]).keys()];
    }
  }

  /** Feeds one datagram from the key port; returns whether it was a new, verified node. */
  onResponse(datagram: Uint8Array, now: number): boolean {
    const r = parseKeyResponse(datagram);
    if (!r || r.kind !== "static") {
      this.responsesRejected++;
      return false;
    }
    const id = KeyFetcher.id(r.depth, r.pos);
    const o = this.outstanding.get(id);
    if (!o || !this.asm.accept(r.depth, r.pos, r.node)) {
      this.responsesRejected++;
      return false;
    }
    this.outstanding.delete(id);
    this.responsesAccepted++;
    this.lastAnswerAt = now;
    if (this.asm.complete) this.finished = now;
    if (o.retries === 0) {
      this.sampleRtt(now - o.sentAt);
      this.answeredSentAt = Math.max(this.answeredSentAt, o.sentAt);
    } else if (now - o.sentAt < this.minRtt / 2) {
      // Faster than any round trip: the first request was answered, it was only overtaken.
      this.reorder = Math.min(MAX_REORDER_SECONDS, this.reorder * 2);
    }
    this.window = Math.min(MAX_WINDOW, this.window + (this.slowStart ? 1 : 1 / this.window));
    this.advanceDepth();
    return true;
  }

  private sampleRtt(rtt: number): void {
    this.minRtt = Math.min(this.minRtt, rtt);
    if (this.srtt === 0) {
      this.srtt = rtt;
      this.rttvar = rtt / 2;
    } else {
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - rtt);
      this.srtt = 0.875 * this.srtt + 0.125 * rtt;
    }
    this.rto = Math.min(MAX_RTO, Math.max(MIN_RTO, this.srtt + 4 * this.rttvar));
  }

  /** Seconds until `poll` may have something new to send (a retransmission deadline). */
  nextDeadline(now: number): number {
    let soonest = Infinity;
    for (const o of this.outstanding.values()) soonest = Math.min(soonest, this.lostAt(o) - now);
    return Math.max(0, soonest);
  }

  get inFlight(): number {
    return this.outstanding.size;
  }
}
