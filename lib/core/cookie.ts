// Cookies: session state a busy server hands to the client instead of keeping it.
//
//   cookie = "pqccookE" || u64be(timestamp) || nonce (12) || ct (100) || tag (16)
//   ct, tag = box(cookie_key(timestamp), nonce, tid || u32be(epoch) || send_root || recv_root,
//                 ad = u64be(timestamp))
//
// Cookie keys: state = kdf(1, session_key, seed); each 30 s slot: state = kdf(1, state, fresh
// randomness) and the slot's key is that state; keys older than 120 s are erased. Only the
// server that made a cookie ever opens it, so its timestamps are its own clock's slots.
//
// A cookie opens a session once: each slot remembers the nonces of the cookies redeemed under
// its key for exactly as long as the key lives, so no replay outlives the memory of it. The seed
// is fresh randomness in every server process, so no cookie survives a restart.

import { concat, equalBytes, readU32be, readU64be, u32be, u64be, wipe } from "./bytes.ts";
import { openDetached, sealDetached } from "./crypto.ts";
import { kdf } from "./kdf.ts";
import {
  COOKIE_BYTES,
  COOKIE_PREFIX,
  EPOCH_LIFETIME_SECONDS,
  EPOCH_SECONDS,
  KEY_BYTES,
  NONCE_BYTES,
  TAG_BYTES,
  TID_BYTES,
} from "./constants.ts";

export interface CookieContents {
  tid: Uint8Array;
  epoch: number;
  sendRoot: Uint8Array;
  recvRoot: Uint8Array;
}

export function isCookie(bytes: Uint8Array): boolean {
  return bytes.length >= COOKIE_PREFIX.length &&
    equalBytes(bytes.subarray(0, COOKIE_PREFIX.length), COOKIE_PREFIX);
}

export function buildCookie(
  key: Uint8Array,
  nonce: Uint8Array,
  timestamp: number,
  c: CookieContents,
): Uint8Array {
  const plain = concat(c.tid, u32be(c.epoch), c.sendRoot, c.recvRoot);
  const ts = u64be(BigInt(timestamp));
  const boxed = sealDetached(key, nonce, plain, ts);
  wipe(plain);
  return concat(COOKIE_PREFIX, ts, nonce, boxed.ciphertext, boxed.tag);
}

/** Splits a cookie's clear parts; null unless it has the exact cookie shape. */
export function cookieTimestamp(cookie: Uint8Array): number | null {
  if (cookie.length !== COOKIE_BYTES || !isCookie(cookie)) return null;
  const ts = readU64be(cookie, 8);
  return ts > BigInt(Number.MAX_SAFE_INTEGER) ? null : Number(ts);
}

export function openCookie(key: Uint8Array, cookie: Uint8Array): CookieContents | null {
  if (cookieTimestamp(cookie) === null) return null;
  const ts = cookie.subarray(8, 16);
  const nonce = cookie.subarray(16, 16 + NONCE_BYTES);
  const ct = cookie.subarray(16 + NONCE_BYTES, COOKIE_BYTES - TAG_BYTES);
  const tag = cookie.subarray(COOKIE_BYTES - TAG_BYTES);
  const plain = openDetached(key, nonce, ct, tag, ts);
  if (!plain) return null;
  const out = {
    tid: plain.slice(0, TID_BYTES),
    epoch: readU32be(plain, TID_BYTES),
    sendRoot: plain.slice(TID_BYTES + 4, TID_BYTES + 4 + KEY_BYTES),
    recvRoot: plain.slice(TID_BYTES + 4 + KEY_BYTES),
  };
  wipe(plain);
  return out;
}

/** Cookies one slot's key may issue (the reference stops at 4096 too); bounds `redeemed`. */
export const MAX_COOKIES_PER_SLOT = 4096;

export type Redeemed =
  | { ok: true; contents: CookieContents }
  | { ok: false; reason: "invalid" | "replay" };

interface Slot {
  key: Uint8Array;
  counter: bigint;
  /** Nonces (as latin1 strings) of cookies already redeemed; erased with the key. */
  redeemed: Set<string>;
}

/** The server's rotating cookie keys. */
export class CookieKeyring {
  private state: Uint8Array;
  private readonly slots = new Map<number, Slot>();

  constructor(sessionKey: Uint8Array, seed: Uint8Array) {
    this.state = kdf(1, sessionKey, seed)[0];
  }

  static slotOf(time: number): number {
    return Math.floor(time / EPOCH_SECONDS) * EPOCH_SECONDS;
  }

  /** Makes the key of the slot holding `time` (once) and erases keys older than 120 s. */
  update(time: number, randomness: Uint8Array): void {
    const slot = CookieKeyring.slotOf(time);
    if (!this.slots.has(slot)) {
      const next = kdf(1, this.state, randomness)[0];
      wipe(this.state);
      this.state = next;
      this.slots.set(slot, { key: next.slice(), counter: 0n, redeemed: new Set() });
    }
    for (const [ts, entry] of this.slots) {
      if (ts < slot - EPOCH_LIFETIME_SECONDS) {
        wipe(entry.key);
        entry.redeemed.clear();
        this.slots.delete(ts);
      }
    }
  }

  keyFor(timestamp: number): Uint8Array | null {
    return this.slots.get(timestamp)?.key ?? null;
  }

  /**
   * Key and a never-repeated nonce (a big-endian counter) of the slot holding `time`. Until
   * update() has made that slot's key (the server's tick runs once a second), the previous
   * slot's serves: an eviction in that second would otherwise hand out no cookie.
   */
  issue(time: number): { key: Uint8Array; nonce: Uint8Array; timestamp: number } | null {
    let timestamp = CookieKeyring.slotOf(time);
    if (!this.slots.has(timestamp)) timestamp -= EPOCH_SECONDS;
    const entry = this.slots.get(timestamp);
    if (!entry || entry.counter >= BigInt(MAX_COOKIES_PER_SLOT)) return null;
    const nonce = new Uint8Array(NONCE_BYTES);
    let c = entry.counter++;
    for (let i = NONCE_BYTES - 1; i >= 0 && c > 0n; i--, c >>= 8n) nonce[i] = Number(c & 0xffn);
    return { key: entry.key, nonce, timestamp };
  }

  /**
   * Opens a returned cookie, at most once in the life of its key. The tag is checked first, so
   * forged cookies cannot use up nonces of genuine ones.
   */
  redeem(cookie: Uint8Array): Redeemed {
    const ts = cookieTimestamp(cookie);
    const entry = ts === null ? undefined : this.slots.get(ts);
    const contents = entry ? openCookie(entry.key, cookie) : null;
    if (!entry || !contents) return { ok: false, reason: "invalid" };
    let id = "";
    for (let i = 16; i < 16 + NONCE_BYTES; i++) id += String.fromCharCode(cookie[i]);
    if (entry.redeemed.has(id)) {
      wipe(contents.sendRoot, contents.recvRoot);
      return { ok: false, reason: "replay" };
    }
    entry.redeemed.add(id);
    return { ok: true, contents };
  }

  /** Cookies remembered as redeemed, over all live keys. */
  get redeemedCount(): number {
    let n = 0;
    for (const e of this.slots.values()) n += e.redeemed.size;
    return n;
  }

  clear(): void {
    wipe(this.state);
    for (const e of this.slots.values()) {
      wipe(e.key);
      e.redeemed.clear();
    }
    this.slots.clear();
  }
}
