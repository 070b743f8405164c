// The server's short-lived keys: one (sntrup761, X25519) pair per 30-second slot. The key server
// hands out the current slot's public keys; the handshake accepts any slot younger than 120 s.
// A slot's keys are made shortly before it starts (never a day's worth at once) and its secrets
// erased once it is 120 s old. Sans-IO: the caller makes keys when `due()` says so.

import { wipe } from "./bytes.ts";
import { EPOCH_LIFETIME_SECONDS, EPOCH_SECONDS } from "./constants.ts";

export interface EphemeralKeys {
  /** Unix time (s) at which the slot starts: a multiple of 30. */
  slot: number;
  sntrupPk: Uint8Array;
  sntrupSk: Uint8Array;
  x25519Pk: Uint8Array;
  x25519Sk: Uint8Array;
}

/** How long before its start a slot's keys are made. */
export const LEAD_SECONDS = 10;

export function slotOf(unixSeconds: number): number {
  return Math.floor(unixSeconds / EPOCH_SECONDS) * EPOCH_SECONDS;
}

export class EphemeralKeyStore {
  private readonly slots = new Map<number, EphemeralKeys>();

  /** Slots whose keys should exist now and do not: the current one, and the next when close. */
  due(now: number): number[] {
    const current = slotOf(now);
    const wanted = [current];
    if (now >= current + EPOCH_SECONDS - LEAD_SECONDS) wanted.push(current + EPOCH_SECONDS);
    return wanted.filter((s) => !this.slots.has(s));
  }

  add(keys: EphemeralKeys): void {
    const old = this.slots.get(keys.slot);
    if (old) erase(old);
    this.slots.set(keys.slot, keys);
  }

  /** The keys the key server hands out now; null until the current slot's keys exist. */
  current(now: number): EphemeralKeys | null {
    return this.slots.get(slotOf(now)) ?? null;
  }

  /** Slots a handshake may use, newest first (the likeliest match). */
  live(now: number): EphemeralKeys[] {
    return [...this.slots.values()]
      .filter((k) => k.slot <= now && now - k.slot < EPOCH_LIFETIME_SECONDS)
      .sort((a, b) => b.slot - a.slot);
  }

  get(slot: number): EphemeralKeys | null {
    return this.slots.get(slot) ?? null;
  }

  /** Erases slots that are 120 s old or more. */
  expire(now: number): number {
    let erased = 0;
    for (const [slot, keys] of this.slots) {
      if (now - slot >= EPOCH_LIFETIME_SECONDS) {
        erase(keys);
        this.slots.delete(slot);
        erased++;
      }
    }
    return erased;
  }

  get size(): number {
    return this.slots.size;
  }

  /** Every slot whose keys are held (made ahead, live, not yet expired). */
  slotIds(): number[] {
    return [...this.slots.keys()];
  }

  clear(): void {
    for (const k of this.slots.values()) erase(k);
    this.slots.clear();
  }
}

function erase(k: EphemeralKeys): void {
  wipe(k.sntrupSk, k.x25519Sk);
}
