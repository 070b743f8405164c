// libmceliece and libntruprime through FFI: the two KEMs of pq1 in the same native code the
// reference uses (McEliece decapsulation ~0.07 ms instead of ~100 ms in WASM).
//
// Optional by design, like ffi/sodium.ts: when the libraries are absent, or this process may
// not load them (an --allow-ffi that does not name them), loadNativeKems() returns null and the
// caller falls back to the WASM build. The permission is queried first, so no prompt appears.
//
// Debian 13 ships the three libraries as packages; on older systems scripts/ensure-deps.sh
// unpacks Debian 13's builds into PRIVATE_KEM_DIR. libmceliece and libntruprime each need
// librandombytes-kernel.so.1, which is opened first so that the dynamic linker finds it by its
// soname even in a directory it does not search.

/** Where scripts/ensure-deps.sh unpacks the libraries on a system that does not package them. */
export const PRIVATE_KEM_DIR = "/usr/local/lib/pqconnect-ts";

/** Directories searched in order: the distribution's first, then the private copy. */
export const KEM_LIBRARY_DIRS = [
  "/usr/lib/x86_64-linux-gnu",
  "/lib/x86_64-linux-gnu",
  PRIVATE_KEM_DIR,
];

const RANDOMBYTES = "librandombytes-kernel.so.1";
const MCELIECE = "libmceliece.so.1";
const NTRUPRIME = "libntruprime.so.1";

// All six return int: 0 on success. mceliece enc/dec return -1 for an input with padding bits
// set (a refusal); keypair and the sntrup761 functions cannot fail.
const MCELIECE_SYMBOLS = {
  mceliece_kem_6960119_keypair: { parameters: ["buffer", "buffer"], result: "i32" },
  mceliece_kem_6960119_enc: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  mceliece_kem_6960119_dec: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

const NTRUPRIME_SYMBOLS = {
  ntruprime_kem_sntrup761_keypair: { parameters: ["buffer", "buffer"], result: "i32" },
  ntruprime_kem_sntrup761_enc: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  ntruprime_kem_sntrup761_dec: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

type McElieceSymbols = Deno.DynamicLibrary<typeof MCELIECE_SYMBOLS>["symbols"];
type NtruPrimeSymbols = Deno.DynamicLibrary<typeof NTRUPRIME_SYMBOLS>["symbols"];

/** One KEM's three functions, arguments in the C order (outputs first). */
export interface NativeKemFunctions {
  keypair(pk: Uint8Array, sk: Uint8Array): number;
  enc(ct: Uint8Array, ss: Uint8Array, pk: Uint8Array): number;
  dec(ss: Uint8Array, ct: Uint8Array, sk: Uint8Array): number;
}

export interface NativeKems {
  /** The directory the libraries were loaded from. */
  dir: string;
  mceliece6960119: NativeKemFunctions;
  sntrup761: NativeKemFunctions;
}

/** Every path the loader may open: what --allow-ffi must name for the native backend. */
export function kemLibraryPaths(dirs: readonly string[] = KEM_LIBRARY_DIRS): string[] {
  return dirs.flatMap((d) => [RANDOMBYTES, MCELIECE, NTRUPRIME].map((f) => `${d}/${f}`));
}

function permitted(path: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "ffi", path }).state === "granted";
  } catch {
    return false;
  }
}

function present(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch (e) {
    // Not stat-able without --allow-read: let dlopen decide.
    return !(e instanceof Deno.errors.NotFound);
  }
}

function loadFrom(dir: string): NativeKems | null {
  const paths = [RANDOMBYTES, MCELIECE, NTRUPRIME].map((f) => `${dir}/${f}`);
  if (!paths.every((p) => permitted(p) && present(p))) return null;
  const opened: Deno.DynamicLibrary<Deno.ForeignLibraryInterface>[] = [];
  try {
    opened.push(Deno.dlopen(paths[0], {}));
    const mc = Deno.dlopen(paths[1], MCELIECE_SYMBOLS);
    opened.push(mc);
    const nt = Deno.dlopen(paths[2], NTRUPRIME_SYMBOLS);
    opened.push(nt);
    return {
      dir,
      mceliece6960119: mcelieceFunctions(mc.symbols),
      sntrup761: ntruFunctions(nt.symbols),
    };
  } catch {
    for (const lib of opened.reverse()) lib.close();
    return null;
  }
}

function mcelieceFunctions(s: McElieceSymbols): NativeKemFunctions {
  return {
    keypair: (pk, sk) => s.mceliece_kem_6960119_keypair(pk, sk),
    enc: (ct, ss, pk) => s.mceliece_kem_6960119_enc(ct, ss, pk),
    dec: (ss, ct, sk) => s.mceliece_kem_6960119_dec(ss, ct, sk),
  };
}

function ntruFunctions(s: NtruPrimeSymbols): NativeKemFunctions {
  return {
    keypair: (pk, sk) => s.ntruprime_kem_sntrup761_keypair(pk, sk),
    enc: (ct, ss, pk) => s.ntruprime_kem_sntrup761_enc(ct, ss, pk),
    dec: (ss, ct, sk) => s.ntruprime_kem_sntrup761_dec(ss, ct, sk),
  };
}

const cache = new Map<string, NativeKems | null>();

/** The first directory whose three libraries this process may open and does; else null. */
export function loadNativeKems(dirs: readonly string[] = KEM_LIBRARY_DIRS): NativeKems | null {
  for (const dir of dirs) {
    if (!cache.has(dir)) cache.set(dir, loadFrom(dir));
    const kems = cache.get(dir);
    if (kems) return kems;
  }
  return null;
}
