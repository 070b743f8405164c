// libsodium through FFI: the tunnel's ChaCha20-Poly1305, the kdf's ChaCha20 and the handshake's
// X25519 in native code.
//
// Optional by design: when the library is absent, or this process may not load it (a narrowed
// --allow-ffi that does not name it), sodium() returns null and callers use the JS code. The
// permission is queried first, so a narrowed process never gets a permission prompt.

import { optionalLibrary } from "./optional_library.ts";

/** Where libsodium 1.0.x lives on the Debian/Ubuntu and RPM layouts we support. */
export const SODIUM_CANDIDATES = [
  "/lib/x86_64-linux-gnu/libsodium.so.23",
  "/usr/lib/x86_64-linux-gnu/libsodium.so.23",
  "/lib/aarch64-linux-gnu/libsodium.so.23",
  "/usr/lib/aarch64-linux-gnu/libsodium.so.23",
  "/lib64/libsodium.so.23",
  "/usr/lib64/libsodium.so.23",
];

const SYMBOLS = {
  sodium_init: { parameters: [], result: "i32" },
  // Combined mode, c = ciphertext || tag: (c, clen_p, m, mlen, ad, adlen, nsec, npub, k)
  crypto_aead_chacha20poly1305_ietf_encrypt: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "u64",
      "buffer",
      "u64",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  // (m, mlen_p, nsec, c, clen, ad, adlen, npub, k); the tag is checked before m is written
  crypto_aead_chacha20poly1305_ietf_decrypt: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "u64",
      "buffer",
      "u64",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  // (c, m, mlen, n (8 bytes), ic (64-bit block counter), k): the original ChaCha20
  crypto_stream_chacha20_xor_ic: {
    parameters: ["buffer", "buffer", "u64", "buffer", "u64", "buffer"],
    result: "i32",
  },
  // (q, n, p): X25519; -1 when the result is all zeros (a low-order p)
  crypto_scalarmult_curve25519: {
    parameters: ["buffer", "buffer", "buffer"],
    result: "i32",
  },
  // (q, n): X25519 with the base point
  crypto_scalarmult_curve25519_base: { parameters: ["buffer", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Sodium = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

// sodium_init: 0 initialised now, 1 already was; -1 unusable (no entropy source, ...).
const library = optionalLibrary(
  SODIUM_CANDIDATES,
  SYMBOLS,
  (lib) => lib.symbols.sodium_init() >= 0,
);

/** libsodium's functions, or null when it cannot be used in this process. */
export function sodium(): Sodium | null {
  return library.symbols();
}

/**
 * Path of the libsodium this process would use (permission aside): what a child process's
 * --allow-ffi must name besides the C library. null when none is installed.
 */
export function sodiumPath(): string | null {
  return library.path();
}
