// The two ChaCha primitives on the packet path, with two interchangeable backends:
//
//   "libsodium"  native code through FFI (ffi/sodium.ts), some 20× faster per packet
//   "js"         @noble/ciphers and lib/chacha20.ts, always available
//
// The backend is chosen once, on first use: libsodium when this process may load it, else JS.
// PQCONNECT_AEAD=js|libsodium (when the process may read it) or useAeadBackend() override that.
// Both produce identical bytes; tests/aead_backend_test.ts replays the vectors under each.
//
// Interfaces take caller-provided output buffers so the packet path allocates nothing: a
// ciphertext is written straight into a send slot and a packet is decrypted where it lies.

import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { chacha20Keystream } from "./chacha20.ts";
import { type Sodium, sodium } from "../ffi/sodium.ts";
import { TAG_BYTES } from "./constants.ts";

export type AeadBackendName = "libsodium" | "js";

interface Backend {
  name: AeadBackendName;
  seal(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, m: Uint8Array, out: Uint8Array): void;
  open(
    key: Uint8Array,
    nonce: Uint8Array,
    ad: Uint8Array,
    sealed: Uint8Array,
    out: Uint8Array,
  ): boolean;
  keystream(key: Uint8Array, nonce: Uint8Array, counter: Uint8Array | null, out: Uint8Array): void;
}

const js: Backend = {
  name: "js",
  seal(key, nonce, ad, m, out) {
    chacha20poly1305(key, nonce, ad).encrypt(m, out);
  },
  open(key, nonce, ad, sealed, out) {
    try {
      chacha20poly1305(key, nonce, ad).decrypt(sealed, out);
      return true;
    } catch {
      return false;
    }
  },
  keystream: chacha20Keystream,
};

function sodiumBackend(s: Sodium): Backend {
  const encrypt = s.crypto_aead_chacha20poly1305_ietf_encrypt_detached;
  const decrypt = s.crypto_aead_chacha20poly1305_ietf_decrypt_detached;
  const xorIc = s.crypto_stream_chacha20_xor_ic;
  const counterCell = new DataView(new ArrayBuffer(8));
  return {
    name: "libsodium",
    seal(key, nonce, ad, m, out) {
      const n = m.length;
      encrypt(out, out.subarray(n), null, m, BigInt(n), ad, BigInt(ad.length), null, nonce, key);
    },
    open(key, nonce, ad, sealed, out) {
      const n = sealed.length - TAG_BYTES;
      // libsodium checks the tag before it writes anything but zeros (on failure) to `out`.
      const c = sealed.subarray(0, n);
      const tag = sealed.subarray(n);
      return decrypt(out, null, c, BigInt(n), tag, ad, BigInt(ad.length), nonce, key) === 0;
    },
    keystream(key, nonce, counter, out) {
      let ic = 0n;
      if (counter) {
        for (let i = 0; i < 8; i++) counterCell.setUint8(i, counter[i]);
        ic = counterCell.getBigUint64(0, true);
      }
      out.fill(0);
      // libsodium carries the 64-bit block counter into its high word and wraps at 2^64, as the
      // reference (which is libsodium) does.
      xorIc(out, out, BigInt(out.length), nonce, ic, key);
    },
  };
}

let active: Backend | null = null;

function envChoice(): string | undefined {
  try {
    const granted = Deno.permissions.querySync({ name: "env", variable: "PQCONNECT_AEAD" });
    return granted.state === "granted" ? Deno.env.get("PQCONNECT_AEAD") : undefined;
  } catch {
    return undefined;
  }
}

function backend(): Backend {
  if (active) return active;
  const wanted = envChoice();
  if (wanted === "js") return active = js;
  const s = sodium();
  if (s) return active = sodiumBackend(s);
  if (wanted === "libsodium") throw new Error("PQCONNECT_AEAD=libsodium, but it cannot be loaded");
  return active = js;
}

/** The backend in use (chosen now if not yet). */
export function aeadBackend(): AeadBackendName {
  return backend().name;
}

/** Switches backend ("auto": libsodium if loadable); throws when libsodium was asked for but
 * cannot be loaded. For tests and benchmarks. */
export function useAeadBackend(name: AeadBackendName | "auto"): AeadBackendName {
  if (name === "js") {
    active = js;
  } else {
    const s = sodium();
    if (!s && name === "libsodium") throw new Error("libsodium cannot be loaded here");
    active = s ? sodiumBackend(s) : js;
  }
  return active.name;
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
  backend().seal(key, nonce, ad, plaintext, out);
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
  return backend().open(key, nonce, ad, sealed, out);
}

/** The original ChaCha20 keystream (8-byte nonce, 64-bit little-endian block counter). */
export function chacha20Stream(
  key: Uint8Array,
  nonce: Uint8Array,
  counter: Uint8Array | null,
  out: Uint8Array,
): void {
  backend().keystream(key, nonce, counter, out);
}
