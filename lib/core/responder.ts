// The whole responder side of one handshake in one call, for a thread that has the KEMs at hand
// (the server's crypto worker): McEliece decapsulation, respondOpen over the live ephemeral
// slots, the sntrup761 decapsulation of the slot that matched, respondFinish. One call instead of
// two worker round trips. Every intermediate secret is erased however the call ends. Pure: the
// KEMs come in as synchronous functions.

import { type Initiation, respondFinish, respondOpen } from "./handshake.ts";
import { wipe } from "./bytes.ts";

export interface ResponderKems {
  /** Throws when the KEM refuses the ciphertext. */
  mcelieceDecap(c0: Uint8Array): Uint8Array;
  /** Null when `slot` holds no secret key (expired meanwhile). */
  sntrupDecap(ct: Uint8Array, slot: number): Uint8Array | null;
}

/**
 * Only what the device needs: the tunnel id and both root keys (and which ephemeral slot
 * opened the initiation), or why there is none.
 */
export type ResponderOutcome =
  | { ok: true; tid: Uint8Array; i2r: Uint8Array; r2i: Uint8Array; slot: number }
  | { ok: false; reason: "auth" | "slot-expired" };

export function respondInitiation(
  msg: Initiation,
  kems: ResponderKems,
  serverStaticX25519Sk: Uint8Array,
  /** The live slots' X25519 secrets, newest first. */
  slots: { x25519Sk: Uint8Array; id: number }[],
  /** Sees the intermediate secrets after they were erased (tests check they are zero). */
  seen?: (secrets: readonly Uint8Array[]) => void,
): ResponderOutcome {
  const secrets: Uint8Array[] = [];
  try {
    const mcelieceSs = kems.mcelieceDecap(msg.c0);
    secrets.push(mcelieceSs);
    const opened = respondOpen(msg, mcelieceSs, serverStaticX25519Sk, slots);
    if (!opened) return { ok: false, reason: "auth" };
    secrets.push(opened.cs); // the chaining key
    const sntrupSs = kems.sntrupDecap(opened.sntrupCt, opened.slotId);
    if (!sntrupSs) return { ok: false, reason: "slot-expired" };
    secrets.push(sntrupSs);
    const r = respondFinish(msg, opened, sntrupSs);
    return { ok: true, tid: r.tid, i2r: r.i2r, r2i: r.r2i, slot: opened.slotId };
  } finally {
    wipe(...secrets);
    seen?.(secrets);
  }
}

/**
 * `slots` (newest first) with `preferred` moved to the front when it is among them. Finding the
 * slot an initiation was made for costs one X25519 per slot tried (~28 µs native), and most
 * clients use the same one: the key server's current slot, or for a while after a rotation the
 * one before, which newest-first would try second for every one of them.
 */
export function preferSlot<T extends { id: number }>(slots: T[], preferred: number): T[] {
  const i = slots.findIndex((s) => s.id === preferred);
  if (i <= 0) return slots;
  return [slots[i], ...slots.slice(0, i), ...slots.slice(i + 1)];
}
