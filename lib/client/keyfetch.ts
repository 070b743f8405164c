// Fetching a server's long-term keys: 937 same-size request/response pairs over UDP, each
// response verified against the key hash from DNS the moment it arrives. Sans-IO: the caller
// sends what `poll` returns and feeds back what arrives.
//
// Pacing is a small window-based controller: a window of outstanding requests that grows by one
// per answered request (slow start doubles it each round trip) and halves when a request times
// out, with a retransmission timeout from measured round trips. Enough to fill a fast link
// without flooding a slow one.

import { KeyTreeAssembler, TREE_SHAPE } from "../core/keytree.ts";
import { parseKeyResponse, staticKeyRequest } from "../core/keymsg.ts";

const INITIAL_WINDOW = 64;
const MAX_WINDOW = 128;
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
    let lost = false;
    for (const o of this.outstanding.values()) {
      if (now - o.sentAt >= this.rto * (1 << Math.min(o.retries, 4))) {
        o.sentAt = now;
        o.retries++;
        lost = true;
        out.push(staticKeyRequest(o.depth, o.pos));
      }
    }
    if (lost) {
      this.window = Math.max(INITIAL_WINDOW / 2, Math.floor(this.window / 2));
      this.slowStart = false;
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
    if (this.asm.complete) this.finished = now;
    if (o.retries === 0) this.sampleRtt(now - o.sentAt);
    this.window = Math.min(MAX_WINDOW, this.window + (this.slowStart ? 1 : 1 / this.window));
    this.advanceDepth();
    return true;
  }

  private sampleRtt(rtt: number): void {
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
    for (const o of this.outstanding.values()) {
      soonest = Math.min(soonest, o.sentAt + this.rto * (1 << Math.min(o.retries, 4)) - now);
    }
    return Math.max(0, soonest);
  }

  get inFlight(): number {
    return this.outstanding.size;
  }
}
