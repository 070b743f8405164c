// The two ChaCha primitives on the packet path, behind one interface so that a shell can hand in
// a faster implementation (lib/runtime/aead_backend.ts loads libsodium through FFI, some 20× faster
// per packet). Until it does, the JS one here is used (@noble/ciphers and ./chacha20.ts). Both
// produce identical bytes; tests/aead_backend_test.ts replays the vectors under each.
//
// Interfaces take caller-provided output buffers so the packet path allocates nothing: a
// ciphertext is written straight into a send slot and a packet is decrypted where it lies.

import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { chacha20Keystream } from "./chacha20.ts";
import { TAG_BYTES } from "./constants.ts";

export type AeadBackendName = "libsodium" | "js";

export interface AeadBackend {
  name: AeadBackendName;
  /** Writes ciphertext || tag (m.length + 16 bytes) into `out`. */
  encrypt(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, m: Uint8Array, out: Uint8Array): void;
  /** Verifies and decrypts ciphertext || tag into `out`; false when the tag does not verify. */
  decrypt(
    key: Uint8Array,
    nonce: Uint8Array,
    ad: Uint8Array,
    sealed: Uint8Array,
    out: Uint8Array,
  ): boolean;
  /**
   * Optional: decrypt() of a packet laid out as ad || ciphertext || tag, where it lies: the
   * associated data is `packet[0:adLength]`, `out` the view `packet[adLength:length - 16]`. A
   * backend that takes pointers needs no further views of the packet for it.
   */
  decryptPacket?(
    key: Uint8Array,
    nonce: Uint8Array,
    packet: Uint8Array,
    adLength: number,
    out: Uint8Array,
  ): boolean;
  /** Original ChaCha20 keystream (8-byte nonce, 64-bit little-endian block counter). */
  keystream(key: Uint8Array, nonce: Uint8Array, counter: Uint8Array | null, out: Uint8Array): void;
}

export const jsAead: AeadBackend = {
  name: "js",
  encrypt(key, nonce, ad, m, out) {
    chacha20poly1305(key, nonce, ad).encrypt(m, out);
  },
  decrypt(key, nonce, ad, sealed, out) {
    try {
      chacha20poly1305(key, nonce, ad).decrypt(sealed, out);
      return true;
    } catch {
      return false;
    }
  },
  keystream: chacha20Keystream,
};

let active: AeadBackend = jsAead;

/** The backend in use. */
export function aeadBackend(): AeadBackendName {
  return active.name;
}

/** Hands in the backend every later call uses; returns the one it replaces. */
export function setAeadBackend(backend: AeadBackend): AeadBackend {
  const previous = active;
  active = backend;
  return previous;
}

/**
 * IETF ChaCha20-Poly1305: encrypts `plaintext` into `out`, which holds ciphertext || tag
 * (plaintext.length + 16 bytes). `out` must not overlap `plaintext` unless it starts at the
 * same byte.
 */
export function aeadSeal(
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  plaintext: Uint8Array,
  out: Uint8Array,
): void {
  if (out.length !== plaintext.length + TAG_BYTES) throw new RangeError("aeadSeal: out size");
  active.encrypt(key, nonce, ad, plaintext, out);
}

/**
 * Verifies ciphertext || tag in `sealed` and decrypts it into `out` (sealed.length - 16 bytes,
 * may be `sealed` itself at the same offset). False when the tag does not verify; `out` is then
 * unspecified.
 */
export function aeadOpen(
  key: Uint8Array,
  nonce: Uint8Array,
  ad: Uint8Array,
  sealed: Uint8Array,
  out: Uint8Array,
): boolean {
  if (sealed.length < TAG_BYTES || out.length !== sealed.length - TAG_BYTES) return false;
  return active.decrypt(key, nonce, ad, sealed, out);
}

/**
 * aeadOpen() of a packet laid out as ad || ciphertext || tag, decrypted where it lies: the
 * associated data is `packet[0:adLength]`, and `out` must be the view
 * `packet[adLength:length - 16]` (the caller keeps it as the plaintext). False when the tag does
 * not verify; `out` is then unspecified.
 */
export function aeadOpenPacket(
  key: Uint8Array,
  nonce: Uint8Array,
  packet: Uint8Array,
  adLength: number,
  out: Uint8Array,
): boolean {
  if (packet.length < adLength + TAG_BYTES) return false;
  if (
    out.buffer !== packet.buffer || out.byteOffset !== packet.byteOffset + adLength ||
    out.length !== packet.length - adLength - TAG_BYTES
  ) throw new RangeError("aeadOpenPacket: out is not the packet's ciphertext");
  if (active.decryptPacket !== undefined) {
    return active.decryptPacket(key, nonce, packet, adLength, out);
  }
  return active.decrypt(key, nonce, packet.subarray(0, adLength), packet.subarray(adLength), out);
}

/** The original ChaCha20 keystream (8-byte nonce, 64-bit little-endian block counter). */
export function chacha20Stream(
  key: Uint8Array,
  nonce: Uint8Array,
  counter: Uint8Array | null,
  out: Uint8Array,
): void {
  active.keystream(key, nonce, counter, out);
}
