// The symmetric primitives of pq1 and X25519: hashing and X25519 on the noble libraries (pure
// JS, audited), the AEAD through lib/aead.ts (libsodium when available, else noble).
// Everything here is deterministic; randomness is always an argument.

import { shake256 } from "@noble/hashes/sha3.js";
import { x25519 } from "@noble/curves/ed25519.js";
import { aeadOpen, aeadSeal } from "./aead.ts";
import { TAG_BYTES } from "./constants.ts";

/** SHAKE256 over the concatenation of `parts`, 32 bytes out. */
export type Shake256 = (parts: readonly Uint8Array[]) => Uint8Array;

function jsShake256(parts: readonly Uint8Array[]): Uint8Array {
  const ctx = shake256.create({ dkLen: 32 });
  for (const p of parts) ctx.update(p);
  return ctx.digest();
}

let shake: Shake256 = jsShake256;

/** The shell may hand in a native SHAKE256 (lib/runtime/hash_backend.ts); null: the JS one. */
export function setShake256(fn: Shake256 | null): void {
  shake = fn ?? jsShake256;
}

/** h(x) = SHAKE256(x) with 32 bytes of output. */
export function h(...parts: Uint8Array[]): Uint8Array {
  return shake(parts);
}

export interface Sealed {
  ciphertext: Uint8Array;
  tag: Uint8Array;
}

/** IETF ChaCha20-Poly1305 with the 16-byte tag kept detached. */
export function sealDetached(
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
export function openDetached(
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

/**
 * X25519 behind an interface, like the AEAD (./aead.ts): a shell may hand in a native one
 * (lib/runtime/aead_backend.ts installs libsodium's with its AEAD, ~10× faster). Both clamp the
 * scalar and give identical bytes.
 */
export interface X25519Backend {
  name: string;
  publicKey(secretKey: Uint8Array): Uint8Array;
  /** null for a low-order public key (an all-zero shared secret). */
  shared(secretKey: Uint8Array, publicKey: Uint8Array): Uint8Array | null;
}

export const jsX25519: X25519Backend = {
  name: "js",
  publicKey: (sk) => x25519.getPublicKey(sk),
  shared(sk, pk) {
    try {
      return x25519.getSharedSecret(sk, pk);
    } catch {
      return null;
    }
  },
};

let activeX25519: X25519Backend = jsX25519;

/** Hands in the X25519 every later call uses; returns the one it replaces. */
export function setX25519Backend(backend: X25519Backend): X25519Backend {
  const previous = activeX25519;
  activeX25519 = backend;
  return previous;
}

/** The X25519 backend in use. */
export function x25519Backend(): string {
  return activeX25519.name;
}

function checkX25519(what: string, b: Uint8Array): void {
  if (b.length !== 32) throw new RangeError(`X25519 ${what} must be 32 bytes`);
}

export function x25519PublicKey(secretKey: Uint8Array): Uint8Array {
  checkX25519("secret key", secretKey);
  return activeX25519.publicKey(secretKey);
}

/** X25519(sk, pk); throws on a low-order public key (an all-zero shared secret). */
export function x25519Shared(secretKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  checkX25519("secret key", secretKey);
  checkX25519("public key", publicKey);
  const shared = activeX25519.shared(secretKey, publicKey);
  if (!shared) throw new Error("X25519: low-order public key");
  return shared;
}
