// Nettle through FFI: SHAKE256 in native code, for h() (the key tree's part checks, the
// handshake). Optional like libsodium (ffi/sodium.ts): when the library is absent, or this
// process may not load it, nettle() returns null and the JS code is used. The permission is
// queried first, so a narrowed process never gets a permission prompt.

import { optionalLibrary } from "./optional_library.ts";

/** Where Nettle 3.6 or later (SHAKE256 through sha3_256_shake) lives on the layouts we support. */
export const NETTLE_CANDIDATES = [
  "/lib/x86_64-linux-gnu/libnettle.so.8",
  "/usr/lib/x86_64-linux-gnu/libnettle.so.8",
  "/lib/aarch64-linux-gnu/libnettle.so.8",
  "/usr/lib/aarch64-linux-gnu/libnettle.so.8",
  "/lib64/libnettle.so.8",
  "/usr/lib64/libnettle.so.8",
];

const SYMBOLS = {
  // (struct sha3_256_ctx *)
  nettle_sha3_256_init: { parameters: ["buffer"], result: "void" },
  // (ctx, length, data)
  nettle_sha3_256_update: { parameters: ["buffer", "usize", "buffer"], result: "void" },
  // (ctx, length, digest): SHAKE256 output of any length; the context is reset afterwards.
  nettle_sha3_256_shake: { parameters: ["buffer", "usize", "buffer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Nettle = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** sizeof(struct sha3_256_ctx) is 344 on LP64 (25 lanes, an index, a 136-byte block). */
export const SHA3_256_CTX_BYTES = 512;

const library = optionalLibrary(NETTLE_CANDIDATES, SYMBOLS);

/** Nettle's functions, or null when it cannot be used in this process. */
export function nettle(): Nettle | null {
  return library.symbols();
}

/** Path of the Nettle this process would use (permission aside); null when none is installed. */
export function nettlePath(): string | null {
  return library.path();
}
