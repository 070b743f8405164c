// The one-message (0-RTT) pq1 handshake. Both sides are pure functions: KEM results, DH secrets
// and the peer's keys come in as arguments, so a recorded handshake replays exactly.
//
//   (c0, k0) = McEliece.enc(pk)          cs = k0, hs = c0
//   (c1, t1) = box(cs, 0, e_pk, hs)      hs = h(hs || c1 || t1)
//   cs = kdf(1, cs, X25519(e, S)); cs = kdf(1, cs, X25519(e, E))
//   (c2, k3) = sntrup761.enc(E_pq)
//   (c3, t3) = box(cs, 0, c2, hs)        cs = kdf(1, cs, k3), hs = h(hs || c3 || t3)
//   (tid, k_i2r, k_r2i) = kdf(3, cs, hs)
//   message = 01 00 || c0 || c1 || t1 || c3 || t3

import { wipe } from "./bytes.ts";
import { h, openDetached, sealDetached, x25519Shared } from "./crypto.ts";
import { kdf } from "./kdf.ts";
import {
  HANDSHAKE_BYTES,
  MCELIECE_CT_BYTES,
  MSG_INITIATION,
  NONCE_BYTES,
  SNTRUP_CT_BYTES,
  TAG_BYTES,
  X25519_BYTES,
} from "./constants.ts";

const ZERO_NONCE = new Uint8Array(NONCE_BYTES);

/** What a completed handshake gives each side. Roots are from the initiator's point of view. */
export interface HandshakeResult {
  tid: Uint8Array;
  /** initiator → responder root key */
  i2r: Uint8Array;
  /** responder → initiator root key */
  r2i: Uint8Array;
}

export interface InitiatorInputs {
  mcelieceCt: Uint8Array; // c0
  mcelieceSs: Uint8Array; // k0
  clientX25519Sk: Uint8Array; // e
  clientX25519Pk: Uint8Array;
  serverStaticX25519Pk: Uint8Array; // S
  serverEphemeralX25519Pk: Uint8Array; // E
  sntrupCt: Uint8Array; // c2
  sntrupSs: Uint8Array; // k3
}

function finish(cs: Uint8Array, hs: Uint8Array): HandshakeResult {
  const [tid, i2r, r2i] = kdf(3, cs, hs);
  const result = { tid: tid.slice(), i2r: i2r.slice(), r2i: r2i.slice() };
  wipe(cs, tid, i2r, r2i);
  return result;
}

/** Builds the 1299-byte initiation message and the session keys. Inputs are not modified. */
export function initiate(inp: InitiatorInputs): HandshakeResult & { message: Uint8Array } {
  if (inp.mcelieceCt.length !== MCELIECE_CT_BYTES) throw new Error("bad McEliece ciphertext");
  if (inp.sntrupCt.length !== SNTRUP_CT_BYTES) throw new Error("bad sntrup761 ciphertext");
  const b1 = sealDetached(inp.mcelieceSs, ZERO_NONCE, inp.clientX25519Pk, inp.mcelieceCt);
  let hs = h(inp.mcelieceCt, b1.ciphertext, b1.tag);
  const dhStatic = x25519Shared(inp.clientX25519Sk, inp.serverStaticX25519Pk);
  const dhEphemeral = x25519Shared(inp.clientX25519Sk, inp.serverEphemeralX25519Pk);
  const cs1 = kdf(1, inp.mcelieceSs, dhStatic)[0];
  const cs2 = kdf(1, cs1, dhEphemeral)[0];
  const b3 = sealDetached(cs2, ZERO_NONCE, inp.sntrupCt, hs);
  const cs3 = kdf(1, cs2, inp.sntrupSs)[0];
  hs = h(hs, b3.ciphertext, b3.tag);
  wipe(dhStatic, dhEphemeral, cs1, cs2);
  const message = new Uint8Array(HANDSHAKE_BYTES);
  message[0] = MSG_INITIATION >>> 8;
  message[1] = MSG_INITIATION & 0xff;
  let o = 2;
  for (const part of [inp.mcelieceCt, b1.ciphertext, b1.tag, b3.ciphertext, b3.tag]) {
    message.set(part, o);
    o += part.length;
  }
  return { ...finish(cs3, hs), message };
}

export interface Initiation {
  c0: Uint8Array;
  c1: Uint8Array;
  t1: Uint8Array;
  c3: Uint8Array;
  t3: Uint8Array;
}

/** Splits an initiation message; null unless it is exactly one. */
export function parseInitiation(msg: Uint8Array): Initiation | null {
  if (msg.length !== HANDSHAKE_BYTES) return null;
  if (msg[0] !== MSG_INITIATION >>> 8 || msg[1] !== (MSG_INITIATION & 0xff)) return null;
  let o = 2;
  const take = (n: number) => msg.subarray(o, o += n);
  return {
    c0: take(MCELIECE_CT_BYTES),
    c1: take(X25519_BYTES),
    t1: take(TAG_BYTES),
    c3: take(SNTRUP_CT_BYTES),
    t3: take(TAG_BYTES),
  };
}

/** The responder's secrets for one live ephemeral slot. */
export interface EphemeralSecret {
  x25519Sk: Uint8Array;
  /** Anything the caller needs to decapsulate c2 with this slot's sntrup761 key. */
  id: number;
}

/** State between the two responder steps: which slot opened c3, and the sntrup ciphertext. */
export interface ResponderPending {
  slotId: number;
  sntrupCt: Uint8Array;
  cs: Uint8Array;
  hs: Uint8Array;
}

/**
 * Responder step 1, after McEliece decapsulation of c0 gave `mcelieceSs`: opens c1, does both
 * DHs and finds the ephemeral slot whose key opens c3. Null means: drop the message.
 */
export function respondOpen(
  msg: Initiation,
  mcelieceSs: Uint8Array,
  serverStaticX25519Sk: Uint8Array,
  slots: EphemeralSecret[],
): ResponderPending | null {
  const clientPk = openDetached(mcelieceSs, ZERO_NONCE, msg.c1, msg.t1, msg.c0);
  if (!clientPk) return null;
  const hs = h(msg.c0, msg.c1, msg.t1);
  let dhStatic: Uint8Array;
  try {
    dhStatic = x25519Shared(serverStaticX25519Sk, clientPk);
  } catch {
    return null; // low-order point
  }
  const cs1 = kdf(1, mcelieceSs, dhStatic)[0];
  wipe(dhStatic);
  for (const slot of slots) {
    let dh: Uint8Array;
    try {
      dh = x25519Shared(slot.x25519Sk, clientPk);
    } catch {
      continue;
    }
    const cs2 = kdf(1, cs1, dh)[0];
    wipe(dh);
    const sntrupCt = openDetached(cs2, ZERO_NONCE, msg.c3, msg.t3, hs);
    if (sntrupCt) {
      wipe(cs1);
      return { slotId: slot.id, sntrupCt, cs: cs2, hs };
    }
    wipe(cs2);
  }
  wipe(cs1);
  return null;
}

/** Responder step 2, with k3 = sntrup761.dec(c2) of the slot that matched. */
export function respondFinish(
  msg: Initiation,
  pending: ResponderPending,
  sntrupSs: Uint8Array,
): HandshakeResult {
  const cs3 = kdf(1, pending.cs, sntrupSs)[0];
  wipe(pending.cs);
  const hs = h(pending.hs, msg.c3, msg.t3);
  return finish(cs3, hs);
}
