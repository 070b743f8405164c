// A tunnel session: per-direction key ratchets and the tunnel packet format.
//
//   packet = 02 00 || tid (32) || u16be(epoch) || u32be(ctr) || ct || tag
//
// Each direction starts at epoch 0 from a root key r: (next epoch root, chain) = kdf(2, r);
// each chain step (chain', 18 packet keys) = kdf(19, chain). Every packet key is used once and
// erased. Time is an argument (seconds, monotonic) so 30 s / 120 s behaviour is testable.
//
// Unlike the reference, a packet that fails authentication moves no epoch: newer epochs derived
// to try it wait aside (not live, no erasure timer started) until a packet of theirs verifies.
// The work one packet may cause is bounded before anything is derived: an epoch out of reach or
// a counter used already is refused on its header alone, keys derived ahead inside the window are
// kept (the genuine sender uses them next), so repeating a forgery costs no new derivation, and
// beyond the window (a burst of losses) a copy of the chain is walked on within a budget of kdf
// calls per second per session; the epoch jumps there only when a packet verifies.

import { readU16be, readU32be, wipe, writeU16be, writeU32be } from "./bytes.ts";
import { kdfInto } from "./kdf.ts";
import { aeadOpen, aeadOpenPacket, aeadSeal } from "./aead.ts";
import {
  EPOCH_LIFETIME_SECONDS,
  EPOCH_SECONDS,
  KEYS_PER_CHAIN_STEP,
  MAX_CHAIN_KEYS,
  MAX_EPOCH_NUMBER,
  MAX_EPOCHS,
  MSG_TUNNEL,
  NONCE_BYTES,
  TID_BYTES,
  TUNNEL_HEADER_BYTES,
  TUNNEL_OVERHEAD,
} from "./constants.ts";

const ZERO_NONCE = new Uint8Array(NONCE_BYTES);

/** The largest counter a packet can carry (u32). */
const MAX_COUNTER = 0xffffffff;

/**
 * How far past the newest packet that verified the latest epoch's window reaches (counters).
 * Older epochs and epochs not yet adopted keep the reference's MAX_CHAIN_KEYS. With 90, TCP over
 * a link with 2 % loss ran at 0.3-4 Mbit/s against 55-70 through the same relay without the
 * tunnel (tests/lab/lossy_link_test.ts). Keys derived for a forgery are kept for the genuine
 * packets that follow, so a forgery costs at most RECEIVE_WINDOW / 18 chain steps once per epoch
 * beyond what genuine traffic causes. A burst of losses longer than the window is crossed by a
 * walk (CATCH_UP_STEPS), not by deriving and keeping every key on the way.
 */
export const RECEIVE_WINDOW = 2048;

/**
 * Most key derivations (kdf calls) one received packet inside the window can cause: the chain
 * steps to the far end of the latest epoch's window, or the roots of the epochs up to the newest
 * the window allows (one kdf(2) each) and the chain steps to the farthest counter of that
 * epoch's window. An epoch's chain steps only when one of its keys is wanted.
 */
export const MAX_DERIVATIONS_PER_PACKET = Math.max(
  Math.ceil(RECEIVE_WINDOW / KEYS_PER_CHAIN_STEP),
  (MAX_EPOCHS - 1) + Math.ceil(MAX_CHAIN_KEYS / KEYS_PER_CHAIN_STEP),
);

/**
 * Catching up beyond the window: a packet past it may walk the chain on towards its counter, at
 * most this many kdf calls per second per session (a token bucket that holds as many, so one
 * packet can cause at most this many too). A genuine sender that lost a burst of up to
 * 18 * 2048 = 36,864 packets is caught up by its first packet that arrives; a forger with any
 * counter gets no more than this, whatever it sends. One walking kdf call makes only the next
 * chain key (one ChaCha20 block); a full bucket is about 0.4 ms of one core
 * (bench/forgery_bench.ts), the most a forger makes one session spend per second beyond the
 * window. A sender losing more than that a second (a blackout of a fast flow) catches up when
 * its next epoch starts, as before.
 */
export const CATCH_UP_STEPS = 2048;

/** Receive keys one epoch keeps for packets older than its newest (lost, or late): at most. */
const MAX_HELD_KEYS = MAX_CHAIN_KEYS + KEYS_PER_CHAIN_STEP;

/** How long epochs derived ahead for packets that did not verify are kept aside. */
const FUTURE_SECONDS = EPOCH_SECONDS;

/**
 * One chain step's output in one buffer: the next chain key's place (zeroed once copied out),
 * then the 18 packet keys, key i at 32 * (i + 1). `live` has bit i set while key i is held.
 * One buffer per step, not a view and a map entry per key: a live tunnel holds a step in each
 * direction, and 47 000 tunnels' views and entries were most of a 350 MB heap (issue 8).
 */
interface KeyBlock {
  keys: Uint8Array;
  live: number;
}

const BLOCK_BYTES = (KEYS_PER_CHAIN_STEP + 1) * 32;
const ALL_KEYS_LIVE = (1 << KEYS_PER_CHAIN_STEP) - 1;

/**
 * Where a catch-up walk stands in an epoch (see CATCH_UP_STEPS): `chain` is the chain key that
 * makes step `step`'s block, further along than the epoch's own; `block` that step's output once
 * derived (the next chain key, then 18 packet keys none of which verified yet). Nothing here
 * counts until a packet of `step` verifies; then the epoch jumps to it.
 */
interface Walk {
  chain: Uint8Array;
  step: number;
  block: Uint8Array | null;
}

/** The walk's next chain key goes here first (one buffer for every session: the core is sync). */
const WALK_SCRATCH = new Uint8Array(32);

/** Packet key `i` of a chain step's block, as a view. */
function keyOf(block: Uint8Array, i: number): Uint8Array {
  return block.subarray(32 * (i + 1), 32 * (i + 2));
}

/** The keys of one epoch in one direction. */
class EpochChain {
  /** kdf(2, root): the next epoch's root, then the chain key (updated by each chain step). */
  private readonly roots = new Uint8Array(64);
  /**
   * Unused packet keys (receiving side), by chain step (counter / 18), steps in counter order;
   * a step is gone once it holds none. Made on the first step.
   */
  private blocks: Map<number, KeyBlock> | null = null;
  /** Keys held in `blocks`. */
  private held = 0;
  /** Counter of the next key a chain step will produce. */
  private nextCtr = 0;
  /** Counter of the newest packet that verified in this epoch (receiving side). */
  private newest = -1;
  /** A catch-up walk beyond the window, while one is under way (receiving side). */
  private walk: Walk | null = null;

  /**
   * Takes ownership of `root` and erases it. `start` drives the sender's 30 s epoch clock;
   * `created` the receiver's 120 s erasure (an epoch derived ahead is created when adopted).
   */
  constructor(
    root: Uint8Array,
    readonly epoch: number,
    readonly start: number,
    public created: number,
  ) {
    kdfInto(root, this.roots);
    wipe(root);
  }

  /** The next epoch's root, as a view (made when asked: a tunnel keeps no view per chain). */
  get nextEpochRoot(): Uint8Array {
    return this.roots.subarray(0, 32);
  }

  /** Time after which a sender moves on to the next epoch. */
  get expiry(): number {
    return this.start + EPOCH_SECONDS;
  }

  /** One chain step: the next 18 packet keys, in counter order, kept. */
  step(): void {
    const blocks = this.blocks ??= new Map();
    blocks.set(this.nextCtr / KEYS_PER_CHAIN_STEP, { keys: this.derive(), live: ALL_KEYS_LIVE });
    this.nextCtr += KEYS_PER_CHAIN_STEP;
    this.held += KEYS_PER_CHAIN_STEP;
    // A walk the epoch's own chain has passed could derive keys used already: it goes.
    if (this.walk !== null && this.walk.step * KEYS_PER_CHAIN_STEP < this.nextCtr) this.dropWalk();
  }

  /**
   * One chain step for a sender, which takes keys strictly in counter order: the block of 18
   * keys is handed over (the caller erases it), not kept.
   */
  stepInOrder(): Uint8Array {
    const block = this.derive();
    this.nextCtr += KEYS_PER_CHAIN_STEP;
    return block;
  }

  private derive(): Uint8Array {
    const block = new Uint8Array(BLOCK_BYTES);
    const chainKey = this.roots.subarray(32);
    kdfInto(chainKey, block);
    chainKey.set(block.subarray(0, 32));
    block.fill(0, 0, 32);
    return block;
  }

  get highestCtr(): number {
    return this.nextCtr - 1;
  }

  /** The block holding `ctr`'s key, while it is held. */
  private blockOf(ctr: number): KeyBlock | undefined {
    const i = ctr % KEYS_PER_CHAIN_STEP;
    const b = this.blocks?.get((ctr - i) / KEYS_PER_CHAIN_STEP);
    return b !== undefined && (b.live >> i & 1) === 1 ? b : undefined;
  }

  /** The key of `ctr` while held, as a view; undefined when it is not. */
  key(ctr: number): Uint8Array | undefined {
    const b = this.blockOf(ctr);
    return b === undefined ? undefined : keyOf(b.keys, ctr % KEYS_PER_CHAIN_STEP);
  }

  /**
   * Chain steps needed before `ctr`'s key is held, or -1 when it never will be: used already
   * (keys are one-time), forgotten, or beyond the window, which reaches `window` counters past
   * the newest packet that verified. (The reference bounds the keys held instead: the keys of
   * lost packets then fill it and, at 2 % loss, stall the epoch after a few thousand packets.)
   */
  stepsTo(ctr: number, window = MAX_CHAIN_KEYS): number {
    if (ctr <= this.highestCtr) return this.blockOf(ctr) !== undefined ? 0 : -1;
    if (ctr - this.newest > window) return -1;
    return Math.ceil((ctr - this.highestCtr) / KEYS_PER_CHAIN_STEP);
  }

  /** True when `ctr` lies beyond the window: never derived, and more than `window` ahead. */
  beyond(ctr: number, window: number): boolean {
    return ctr > this.highestCtr && ctr - this.newest > window;
  }

  /**
   * `ctr`'s key (a counter beyond the window) by walking a copy of the chain on, one kdf call per
   * token `spend` grants; undefined while the tokens do not reach it (the walk keeps its place
   * for the next packet). The epoch's own chain and keys are left as they are: a forgery moves
   * nothing but the walk, and genuine packets inside the window still find their keys.
   */
  walkTo(ctr: number, spend: () => boolean): Uint8Array | undefined {
    const i = ctr % KEYS_PER_CHAIN_STEP;
    const target = (ctr - i) / KEYS_PER_CHAIN_STEP;
    let w = this.walk;
    if (w !== null && w.step === target && w.block !== null) return keyOf(w.block, i);
    const base = this.nextCtr / KEYS_PER_CHAIN_STEP;
    if (w === null || w.step > target) {
      // No walk yet, or one gone past `ctr` (a chain only runs forward): from the epoch's own.
      this.dropWalk();
      w = this.walk = { chain: this.roots.slice(32), step: base, block: null };
    } else if (w.block !== null) {
      // moving on from a step whose block was derived: it holds the next chain key
      w.chain.set(w.block.subarray(0, 32));
      w.block.fill(0);
      w.block = null;
      w.step++;
    }
    let reached = true;
    while (w.step < target) {
      if (!spend()) {
        reached = false;
        break;
      }
      kdfInto(w.chain, WALK_SCRATCH);
      w.chain.set(WALK_SCRATCH);
      w.step++;
    }
    WALK_SCRATCH.fill(0);
    if (!reached || !spend()) return undefined;
    w.block = new Uint8Array(BLOCK_BYTES);
    kdfInto(w.chain, w.block);
    return keyOf(w.block, i);
  }

  /**
   * A packet the walk found the key of verified: the epoch jumps to its chain step. The keys
   * between the old end and that step are never derived (their packets were lost, or are too
   * late); keys held behind are forgotten down to MAX_HELD_KEYS as in used().
   */
  jumpTo(ctr: number): void {
    const w = this.walk!;
    const block = w.block!;
    const i = ctr % KEYS_PER_CHAIN_STEP;
    this.roots.set(block.subarray(0, 32), 32);
    block.fill(0, 0, 32);
    wipe(w.chain);
    this.walk = null;
    keyOf(block, i).fill(0);
    (this.blocks ??= new Map()).set(w.step, { keys: block, live: ALL_KEYS_LIVE & ~(1 << i) });
    this.held += KEYS_PER_CHAIN_STEP - 1;
    this.nextCtr = (w.step + 1) * KEYS_PER_CHAIN_STEP;
    this.newest = ctr;
    this.trim();
  }

  /** Bytes of key material held: packet keys' blocks and a walk's. */
  get keyBytes(): number {
    const w = this.walk;
    const walk = w === null ? 0 : w.chain.length + (w.block?.length ?? 0);
    return this.roots.length + (this.blocks?.size ?? 0) * BLOCK_BYTES + walk;
  }

  /** Erases the walk's chain key and block (an epoch no longer the latest needs none). */
  dropWalk(): void {
    const w = this.walk;
    if (w === null) return;
    wipe(w.chain);
    w.block?.fill(0);
    this.walk = null;
  }

  /**
   * Erases the key of a packet that verified and moves the window. Keys left behind belong to
   * lost packets (or very late ones): beyond MAX_HELD_KEYS the oldest are forgotten.
   */
  used(ctr: number): void {
    const blocks = this.blocks!;
    const i = ctr % KEYS_PER_CHAIN_STEP;
    const step = (ctr - i) / KEYS_PER_CHAIN_STEP;
    this.forget(blocks, step, blocks.get(step)!, i);
    if (ctr > this.newest) this.newest = ctr;
    this.trim();
  }

  /** Forgets the oldest keys left behind the newest verified packet beyond MAX_HELD_KEYS. */
  private trim(): void {
    const blocks = this.blocks!;
    while (this.held > MAX_HELD_KEYS) {
      // Chain steps come in counter order: the first block's lowest key is the oldest held. Keys
      // ahead of the newest verified packet stay (the sender uses them next; a forgery may
      // have had them derived, and must not make the genuine packets' keys go).
      const [step, b] = blocks.entries().next().value!;
      const low = 31 - Math.clz32(b.live & -b.live);
      if (step * KEYS_PER_CHAIN_STEP + low >= this.newest) break;
      this.forget(blocks, step, b, low);
    }
  }

  /** Erases key `i` of the block of chain step `step`; an empty block goes. */
  private forget(blocks: Map<number, KeyBlock>, step: number, b: KeyBlock, i: number): void {
    keyOf(b.keys, i).fill(0);
    b.live &= ~(1 << i);
    this.held--;
    if (b.live === 0) blocks.delete(step);
  }

  clear(): void {
    wipe(this.roots);
    this.dropWalk();
    if (this.blocks === null) return;
    for (const b of this.blocks.values()) b.keys.fill(0);
    this.blocks.clear();
    this.held = 0;
  }
}

export interface PacketKey {
  epoch: number;
  ctr: number;
  key: Uint8Array;
}

/** Sending side: always the lowest unused counter of the current epoch. */
export class SendChain {
  private chain: EpochChain;
  /** Next counter to use: keys are taken in order, so it is the lowest unused one. */
  private ctr = 0;
  /** Counter of the key take() returned last. */
  lastCtr = -1;
  /** No epoch after the current one: a cookie handed its successors to a rebuilt session. */
  private capped = false;
  /** The current chain step's block, its keys taken in order from `taken` on (erased on moving). */
  private pending: Uint8Array | null = null;
  private taken = KEYS_PER_CHAIN_STEP;

  constructor(root: Uint8Array, epoch: number, now: number) {
    this.chain = new EpochChain(root, epoch, now, now);
  }

  get epoch(): number {
    return this.chain.epoch;
  }

  get nextEpochRoot(): Uint8Array {
    return this.chain.nextEpochRoot;
  }

  /** Moves to the next epoch; the new one starts no later than the old one expired. */
  advance(now: number): void {
    const old = this.chain;
    if (this.capped) throw new Error("no epoch after a cookie's");
    if (old.epoch >= MAX_EPOCH_NUMBER) throw new Error("epoch counter exhausted");
    this.chain = makeChain(old, now);
    this.ctr = 0;
    this.dropPending();
    old.clear();
  }

  /** Erases the keys of the current chain step not taken yet. */
  private dropPending(): void {
    this.pending?.fill(0);
    this.pending = null;
    this.taken = KEYS_PER_CHAIN_STEP;
  }

  /** Moves on to the epoch the clock says it should send in by `now`. */
  settle(now: number): void {
    while (now > this.chain.expiry) this.advance(now);
  }

  /** Takes the next packet key out of the chain (the caller erases it after use). */
  next(now: number): PacketKey {
    const key = this.take(now);
    return { epoch: this.chain.epoch, ctr: this.lastCtr, key };
  }

  /** next() without the wrapper object: the counter is left in lastCtr, the epoch in epoch. */
  take(now: number): Uint8Array {
    this.settle(now);
    if (this.taken === KEYS_PER_CHAIN_STEP) {
      // A counter travels as u32: a chain step that would pass it starts the next epoch.
      if (this.ctr + KEYS_PER_CHAIN_STEP - 1 > MAX_COUNTER) this.advance(now);
      this.pending = this.chain.stepInOrder();
      this.taken = 0;
    }
    const key = keyOf(this.pending!, this.taken++);
    this.lastCtr = this.ctr++;
    return key;
  }

  /** Stays in the current epoch for good: its successor's root is erased. */
  cap(): void {
    this.capped = true;
    wipe(this.chain.nextEpochRoot);
  }

  clear(): void {
    this.dropPending();
    this.chain.clear();
  }
}

/** A key found for an incoming packet, to be committed only once the packet verifies. */
interface Candidate {
  key: Uint8Array;
  commit: () => void;
}

/**
 * The kdf calls a session's catch-up walks may still make: a token bucket of CATCH_UP_STEPS,
 * refilled at CATCH_UP_STEPS a second by the time the packets arrive at (a clock that goes back
 * refills nothing). Made on the first packet beyond the window, full, and kept: a session that
 * never lost a burst carries none.
 */
class StepBudget {
  private tokens = CATCH_UP_STEPS;
  constructor(private at: number) {}

  refill(now: number): void {
    if (!(now > this.at)) return;
    this.tokens = Math.min(CATCH_UP_STEPS, this.tokens + (now - this.at) * CATCH_UP_STEPS);
    this.at = now;
  }

  get empty(): boolean {
    return this.tokens < 1;
  }

  /** Takes one kdf call's token; false when none is left. */
  readonly spend = (): boolean => {
    if (this.tokens < 1) return false;
    this.tokens--;
    return true;
  };
}

/** Receiving side: several live epochs, keys derived on demand within bounds. */
export class ReceiveChain {
  private readonly chains = new Map<number, EpochChain>();
  private latest: number;
  /** Epochs latest+1, latest+2, ... derived for packets not yet verified: not live. */
  private future: EpochChain[] = [];
  /** kdf calls made so far (a chain step or a new epoch's root: one each). */
  derivations = 0;
  /** No epoch after the latest (see SendChain.cap). */
  private capped = false;
  /** What catch-up walks beyond the window may still derive (made when first needed). */
  private budget: StepBudget | null = null;

  constructor(root: Uint8Array, epoch: number, now: number) {
    this.chains.set(epoch, new EpochChain(root, epoch, now, now));
    this.latest = epoch;
  }

  get latestEpoch(): number {
    return this.latest;
  }

  get liveEpochs(): number {
    return this.chains.size;
  }

  nextEpochRoot(epoch: number): Uint8Array | null {
    return this.chains.get(epoch)?.nextEpochRoot ?? null;
  }

  /** Bytes of key material held by every epoch, live or aside (bounded whatever arrives). */
  get keyBytes(): number {
    let n = 0;
    for (const c of this.chains.values()) n += c.keyBytes;
    for (const c of this.future) n += c.keyBytes;
    return n;
  }

  /** Erases every epoch created more than 120 s ago, and epochs kept aside too long. */
  expire(now: number): void {
    // Called for every packet: a scan only once something may be due (or the epochs changed).
    if (now < this.nextExpiry) return;
    let next = Infinity;
    for (const [epoch, chain] of this.chains) {
      if (now - chain.created >= EPOCH_LIFETIME_SECONDS) {
        chain.clear();
        this.chains.delete(epoch);
      } else next = Math.min(next, chain.created + EPOCH_LIFETIME_SECONDS);
    }
    const f = this.future[0];
    if (f && (now - f.created >= FUTURE_SECONDS || !this.chains.has(this.latest))) {
      this.dropFuture();
    } else if (f) next = Math.min(next, f.created + FUTURE_SECONDS);
    // A hair early, so rounding can never make a scan late.
    this.nextExpiry = next - 1e-6;
  }

  /** Earliest time expire() has work to do; -Infinity after every change to the epochs. */
  private nextExpiry = -Infinity;

  private dropFuture(): void {
    for (const c of this.future) c.clear();
    this.future = [];
    this.nextExpiry = -Infinity;
  }

  /** Adds the epoch after the latest (a cookie tells the client to). */
  advance(now: number): boolean {
    const last = this.chains.get(this.latest);
    if (!last || this.capped || this.latest >= MAX_EPOCH_NUMBER) return false;
    this.dropFuture();
    const next = makeChain(last, now);
    this.derivations++;
    this.chains.set(next.epoch, next);
    this.latest = next.epoch;
    this.nextExpiry = -Infinity;
    return true;
  }

  /** The key for (epoch, ctr) when it is already derived (the common case), else undefined. */
  derived(epoch: number, ctr: number): Uint8Array | undefined {
    return this.chains.get(epoch)?.key(ctr);
  }

  /** Erases a derived() key once its packet verified. */
  consume(epoch: number, ctr: number): void {
    this.chains.get(epoch)!.used(ctr);
  }

  /**
   * Finds the key for (epoch, ctr); no epoch moves until commit(). Inside the window a packet
   * costs at most MAX_DERIVATIONS_PER_PACKET, and only the first time: derived keys are kept.
   * Beyond it (the latest epoch's, or a newer epoch's past MAX_CHAIN_KEYS: a burst of losses
   * longer than the window) the chain is walked on within the session's CATCH_UP_STEPS budget.
   */
  find(epoch: number, ctr: number, now: number): Candidate | null {
    const existing = this.chains.get(epoch);
    if (existing) {
      const window = epoch === this.latest ? RECEIVE_WINDOW : MAX_CHAIN_KEYS;
      const found = this.keyIn(existing, ctr, window, null);
      if (found || epoch !== this.latest || !existing.beyond(ctr, window)) return found;
      return this.walkIn(existing, ctr, now, null);
    }
    // A newer epoch: at most MAX_EPOCHS live once it is adopted.
    const ahead = epoch - this.latest;
    if (ahead <= 0 || this.capped || this.chains.size + ahead > MAX_EPOCHS) return null;
    const last = this.chains.get(this.latest);
    if (!last) return null;
    const known = this.future[ahead - 1];
    // an epoch not derived yet holds no keys: its window ends at MAX_CHAIN_KEYS
    const inWindow = known ? known.stepsTo(ctr) >= 0 : ctr < MAX_CHAIN_KEYS;
    if (!inWindow) {
      if (known ? !known.beyond(ctr, MAX_CHAIN_KEYS) : false) return null;
      if (this.budgetAt(now).empty) return null; // before any epoch's root is derived
    }
    while (this.future.length < ahead) {
      this.future.push(makeChain(this.future.at(-1) ?? last, now));
      this.derivations++;
    }
    this.nextExpiry = -Infinity;
    const adopt = () => {
      for (const c of this.future.splice(0, ahead)) {
        c.created = now; // its 120 s start when it becomes live
        this.chains.set(c.epoch, c);
      }
      this.latest = epoch;
      this.nextExpiry = -Infinity;
      // only the latest epoch walks beyond its window: walks in the others are erased
      for (const c of this.chains.values()) if (c.epoch !== epoch) c.dropWalk();
    };
    const chain = this.future[ahead - 1];
    return inWindow
      ? this.keyIn(chain, ctr, MAX_CHAIN_KEYS, adopt)
      : this.walkIn(chain, ctr, now, adopt);
  }

  /** `ctr`'s key in `chain`, stepping the chain within the window (those keys are kept). */
  private keyIn(
    chain: EpochChain,
    ctr: number,
    window: number,
    onCommit: (() => void) | null,
  ): Candidate | null {
    const steps = chain.stepsTo(ctr, window);
    if (steps < 0) return null;
    for (let i = 0; i < steps; i++) chain.step();
    this.derivations += steps;
    const key = chain.key(ctr)!;
    return {
      key,
      commit: () => {
        chain.used(ctr);
        onCommit?.();
      },
    };
  }

  /** The session's catch-up budget, refilled to `now`. */
  private budgetAt(now: number): StepBudget {
    const b = this.budget ??= new StepBudget(now);
    b.refill(now);
    return b;
  }

  /** `ctr`'s key beyond `chain`'s window, walking within the budget; a jump once it verifies. */
  private walkIn(
    chain: EpochChain,
    ctr: number,
    now: number,
    onCommit: (() => void) | null,
  ): Candidate | null {
    const budget = this.budgetAt(now);
    const key = chain.walkTo(ctr, () => budget.spend() && ++this.derivations > 0);
    if (key === undefined) return null;
    return {
      key,
      commit: () => {
        chain.jumpTo(ctr);
        onCommit?.();
      },
    };
  }

  /**
   * Keeps the live epochs up to `last`, derives none after it: later epochs and every
   * next-epoch root are erased.
   */
  cap(last: number): void {
    this.capped = true;
    this.dropFuture();
    for (const [epoch, c] of this.chains) {
      if (epoch > last) {
        c.clear();
        this.chains.delete(epoch);
      } else wipe(c.nextEpochRoot);
    }
    this.latest = Math.min(this.latest, last);
  }

  clear(): void {
    for (const c of this.chains.values()) c.clear();
    this.chains.clear();
    this.dropFuture();
  }
}

function makeChain(previous: EpochChain, now: number): EpochChain {
  const start = Math.min(now, previous.expiry);
  return new EpochChain(previous.nextEpochRoot.slice(), previous.epoch + 1, start, now);
}

export type OpenResult =
  | { ok: true; plaintext: Uint8Array; epoch: number; ctr: number }
  | { ok: false; reason: "short" | "type" | "tid" | "no-key" | "auth" | "expired" };

/** One tunnel's cryptographic state. `initiator` picks which root sends. */
export class TunnelSession {
  private readonly send: SendChain;
  private readonly recv: ReceiveChain;
  private readonly header = new Uint8Array(TUNNEL_HEADER_BYTES);
  private closed = false;

  /** Both chains start at `epoch` from their roots (which they take over). */
  private constructor(
    readonly tid: Uint8Array,
    sendRoot: Uint8Array,
    recvRoot: Uint8Array,
    epoch: number,
    now: number,
  ) {
    if (tid.length !== TID_BYTES) throw new Error("tid must be 32 bytes");
    this.send = new SendChain(sendRoot, epoch, now);
    this.recv = new ReceiveChain(recvRoot, epoch, now);
    writeU16be(this.header, 0, MSG_TUNNEL);
    this.header.set(tid, 2);
  }

  /** A fresh session at epoch 0. Takes ownership of both roots (they are erased). */
  static create(
    tid: Uint8Array,
    sendRoot: Uint8Array,
    recvRoot: Uint8Array,
    now: number,
  ): TunnelSession {
    return new TunnelSession(tid.slice(), sendRoot, recvRoot, 0, now);
  }

  /** Rebuilds a session from a cookie: both chains resume at epoch + 1 from the saved roots. */
  static fromCookie(
    tid: Uint8Array,
    epoch: number,
    sendRoot: Uint8Array,
    recvRoot: Uint8Array,
    now: number,
  ): TunnelSession {
    return new TunnelSession(tid.slice(), sendRoot, recvRoot, epoch + 1, now);
  }

  get sendEpoch(): number {
    return this.send.epoch;
  }

  get receiveEpoch(): number {
    return this.recv.latestEpoch;
  }

  /** Bytes of receive-side key material held (roots, chain and packet keys). */
  get receiveKeyBytes(): number {
    return this.recv.keyBytes;
  }

  /** Receive-side key derivations so far (kdf calls): what packets cost beyond the AEAD. */
  get derivations(): number {
    return this.recv.derivations;
  }

  /** True while some receive keys are unexpired; a dead session can never decrypt again. */
  alive(now: number): boolean {
    if (this.closed) return false;
    this.recv.expire(now);
    return this.recv.liveEpochs > 0;
  }

  /**
   * Encrypts one payload into a tunnel packet. With `into` (at least payload + 56 bytes, not
   * overlapping the payload) the packet is built there and a view of it returned: no allocation.
   */
  sealPacket(payload: Uint8Array, now: number, into?: Uint8Array): Uint8Array {
    const n = payload.length + TUNNEL_OVERHEAD;
    const out = into !== undefined && into.length >= n ? into : new Uint8Array(n);
    return out.subarray(0, this.sealPacketInto(payload, out, now));
  }

  /** Builds the tunnel packet for `payload` in `out` (not overlapping it); returns its length. */
  sealPacketInto(payload: Uint8Array, out: Uint8Array, now: number): number {
    if (this.closed) throw new Error("session closed");
    const n = payload.length + TUNNEL_OVERHEAD;
    if (out.length < n) throw new RangeError("sealPacketInto: output too small");
    const key = this.send.take(now);
    // The header is built in the session's own buffer, the associated data as it is.
    const header = this.header;
    writeU16be(header, 34, this.send.epoch);
    writeU32be(header, 36, this.send.lastCtr);
    out.set(header);
    aeadSeal(key, ZERO_NONCE, header, payload, out.subarray(TUNNEL_HEADER_BYTES, n));
    key.fill(0); // erased after its one use
    return n;
  }

  /**
   * Decrypts a tunnel packet into a new buffer; `packet` is left as it is. Nothing changes
   * unless it authenticates; then its key is erased, newer epochs are adopted, and the sending
   * side follows the peer to its epoch.
   */
  openPacket(packet: Uint8Array, now: number): OpenResult {
    return this.openTo(packet, now, false);
  }

  /**
   * openPacket() decrypting where the packet lies: the plaintext is a view of `packet` (after the
   * header), whose bytes are overwritten, also when the packet turns out to be forged.
   */
  openPacketInPlace(packet: Uint8Array, now: number): OpenResult {
    return this.openTo(packet, now, true);
  }

  private openTo(packet: Uint8Array, now: number, inPlace: boolean): OpenResult {
    if (packet.length < TUNNEL_OVERHEAD) return { ok: false, reason: "short" };
    if (readU16be(packet, 0) !== MSG_TUNNEL) return { ok: false, reason: "type" };
    const tid = this.tid;
    for (let i = 0; i < TID_BYTES; i++) {
      if (packet[2 + i] !== tid[i]) return { ok: false, reason: "tid" };
    }
    if (!this.alive(now)) return { ok: false, reason: "expired" };
    const epoch = readU16be(packet, 34);
    const ctr = readU32be(packet, 36);
    const n = packet.length - TUNNEL_OVERHEAD;
    const plaintext = inPlace
      ? packet.subarray(TUNNEL_HEADER_BYTES, TUNNEL_HEADER_BYTES + n)
      : new Uint8Array(n);
    // Fast path: the key is already derived, nothing to fork or commit but its erasure.
    const direct = this.recv.derived(epoch, ctr);
    if (direct) {
      if (!openWith(direct, packet, plaintext, inPlace)) return { ok: false, reason: "auth" };
      this.recv.consume(epoch, ctr);
      this.followPeer(now);
      return { ok: true, plaintext, epoch, ctr };
    }
    const candidate = this.recv.find(epoch, ctr, now);
    if (!candidate) return { ok: false, reason: "no-key" };
    if (!openWith(candidate.key, packet, plaintext, inPlace)) {
      return { ok: false, reason: "auth" };
    }
    candidate.commit();
    this.followPeer(now);
    return { ok: true, plaintext, epoch, ctr };
  }

  /** A cookie from the server moves the receive side one epoch on (the sender follows). */
  adoptCookieEpoch(now: number): void {
    if (this.recv.advance(now)) this.followPeer(now);
  }

  private followPeer(now: number): void {
    if (this.recv.latestEpoch <= this.send.epoch) return;
    while (this.recv.latestEpoch > this.send.epoch && this.recv.liveEpochs <= MAX_EPOCHS) {
      this.send.advance(now);
    }
  }

  /**
   * What a cookie must carry to rebuild this session at the next epoch. The send side first
   * settles on its epoch at `now`, the time the cookie is sealed: were the packet carrying the
   * cookie to start a new epoch, the rebuilt session would send with that epoch's keys again.
   * An idle peer's receive side lags behind the clock: it is derived forward to that epoch
   * (the session is retired right after, so the extra epochs live only for the cookie).
   */
  cookieState(now: number): { epoch: number; sendRoot: Uint8Array; recvRoot: Uint8Array } | null {
    if (this.closed) return null;
    this.send.settle(now);
    const epoch = this.send.epoch;
    for (let i = 0; i < MAX_EPOCHS && this.recv.latestEpoch < epoch; i++) {
      if (!this.recv.advance(now)) break;
    }
    const recvRoot = this.recv.nextEpochRoot(epoch);
    if (!recvRoot) return null;
    return { epoch, sendRoot: this.send.nextEpochRoot.slice(), recvRoot: recvRoot.slice() };
  }

  /**
   * After cookieState(): the session lives on in the epochs it has (a server lets an evicted
   * tunnel linger while its cookie travels) but never derives the next, which the cookie hands
   * to the rebuilt session. So the two never hold the same key, in either direction.
   */
  capAtCookieEpoch(): void {
    this.send.cap();
    this.recv.cap(this.send.epoch);
  }

  /** Erases every key. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.send.clear();
    this.recv.clear();
  }
}

/**
 * Verifies and decrypts a tunnel packet with `key` into `plaintext`: where it lies (`plaintext`
 * is then the packet's view after the header: no views of the header and the sealed part are
 * cut per packet) or into a buffer of its own.
 */
function openWith(
  key: Uint8Array,
  packet: Uint8Array,
  plaintext: Uint8Array,
  inPlace: boolean,
): boolean {
  if (inPlace) return aeadOpenPacket(key, ZERO_NONCE, packet, TUNNEL_HEADER_BYTES, plaintext);
  const ad = packet.subarray(0, TUNNEL_HEADER_BYTES);
  return aeadOpen(key, ZERO_NONCE, ad, packet.subarray(TUNNEL_HEADER_BYTES), plaintext);
}

/**
 * Map key for the tunnel id at `offset` (2 in a tunnel packet): its first 8 bytes. Random ids,
 * so 64 bits tell sessions apart; the whole id is checked when the session opens the packet.
 */
export function tidKeyAt(bytes: Uint8Array, offset: number): string {
  return String.fromCharCode(
    bytes[offset],
    bytes[offset + 1],
    bytes[offset + 2],
    bytes[offset + 3],
    bytes[offset + 4],
    bytes[offset + 5],
    bytes[offset + 6],
    bytes[offset + 7],
  );
}
