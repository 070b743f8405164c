// Nettle through FFI: SHAKE256 in native code, for h() (the key tree's part checks, the
// handshake). Optional like libsodium (ffi/sodium.ts): when the library is absent, or this
// process may not load it, nettle() returns null and the JS code is used. The permission is
// queried first, so a narrowed process never gets a permission prompt.

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

let state: { symbols: Nettle; path: string } | null | undefined;

function permitted(path: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "ffi", path }).state === "granted";
  } catch {
    return false;
  }
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return true; // not stat-able without --allow-read: let dlopen decide
  }
}

function load(): { symbols: Nettle; path: string } | null {
  if (state !== undefined) return state;
  state = null;
  for (const path of NETTLE_CANDIDATES) {
    if (!permitted(path) || !exists(path)) continue;
    try {
      const lib = Deno.dlopen(path, SYMBOLS);
      state = { symbols: lib.symbols, path };
      break;
    } catch {
      // Missing, too old (no sha3_256_shake), wrong architecture: try the next one.
    }
  }
  return state;
}

/** Nettle's functions, or null when it cannot be used in this process. */
export function nettle(): Nettle | null {
  return load()?.symbols ?? null;
}

/** Path of the Nettle this process would use (permission aside); null when none is installed. */
export function nettlePath(): string | null {
  const loaded = load();
  if (loaded) return loaded.path;
  for (const path of NETTLE_CANDIDATES) {
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch { /* absent or not readable */ }
  }
  return null;
}
