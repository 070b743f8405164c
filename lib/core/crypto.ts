// The symmetric primitives of pq1 and X25519: hashing and X25519 on the noble libraries (pure
// JS, audited), the AEAD through lib/aead.ts (libsodium when available, else noble).
// Everything here is deterministic; randomness is always an argument.

import { shake256 } from "@noble/hashes/sha3.js";
import { x25519 } from "@noble/curves/ed25519.js";
import { aeadOpen, aeadSeal } from "./aead.ts";
import { TAG_BYTES } from "./constants.ts";

/** h(x) = SHAKE256(x) with 32 bytes of output. */
export function h(...parts: Uint8Array[]): Uint8Array {
  const ctx = shake256.create({ dkLen: 32 });
  for (const p of parts) ctx.update(p);
  return ctx.digest();
}

export interface Sealed {
  ciphertext: Uint8Array;
  tag: Uint8Array;
}

/** IETF ChaCha20-Poly1305 with the 16-byte tag kept detached. */
export function seal(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  ad: Uint8Array,
): Sealed {
  const n = plaintext.length;
  const both = new Uint8Array(n + TAG_BYTES);
  aeadSeal(key, nonce, ad, plaintext, both);
  return { ciphertext: both.subarray(0, n), tag: both.subarray(n) };
}

/** Opens a detached-tag box; null when the tag does not verify. */
export function open(
  key: Uint8Array,
  nonce: Uint8Array,
  ciphertext: Uint8Array,
  tag: Uint8Array,
  ad: Uint8Array,
): Uint8Array | null {
  if (tag.length !== TAG_BYTES) return null;
  const both = new Uint8Array(ciphertext.length + TAG_BYTES);
  both.set(ciphertext);
  both.set(tag, ciphertext.length);
  const plaintext = both.subarray(0, ciphertext.length);
  return aeadOpen(key, nonce, ad, both, plaintext) ? plaintext : null;
}

export function x25519PublicKey(secretKey: Uint8Array): Uint8Array {
  return x25519.getPublicKey(secretKey);
}

/** X25519(sk, pk); throws on a low-order public key (an all-zero shared secret). */
export function x25519Shared(secretKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  return x25519.getSharedSecret(secretKey, publicKey);
}
