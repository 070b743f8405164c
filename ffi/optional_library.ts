// A native library the program can do without (libsodium, Nettle): the first candidate path
// that this process may load and that loads is used, once; otherwise callers take the JS code.
// The FFI permission is queried before anything is opened, so a process whose --allow-ffi does
// not name the library never gets a permission prompt.

export interface OptionalLibrary<S extends Deno.ForeignLibraryInterface> {
  /** The library's functions, or null when it cannot be used in this process. */
  symbols(): Deno.DynamicLibrary<S>["symbols"] | null;
  /** Path of the library this process would use (permission aside): what a child process's
   * --allow-ffi must name. null when none is installed. */
  path(): string | null;
}

function permitted(path: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "ffi", path }).state === "granted";
  } catch {
    return false;
  }
}

function isFile(path: string, unknown: boolean): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return unknown; // absent, or not stat-able without --allow-read
  }
}

/**
 * `accept` may reject a library that opened but cannot be used (e.g. libsodium whose
 * initialisation failed); it is closed and the next candidate tried.
 */
export function optionalLibrary<S extends Deno.ForeignLibraryInterface>(
  candidates: readonly string[],
  symbols: S,
  accept: (lib: Deno.DynamicLibrary<S>) => boolean = () => true,
): OptionalLibrary<S> {
  let state: { lib: Deno.DynamicLibrary<S>; path: string } | null | undefined;
  const load = () => {
    if (state !== undefined) return state;
    state = null;
    for (const path of candidates) {
      // Not stat-able without --allow-read: let dlopen decide.
      if (!permitted(path) || !isFile(path, true)) continue;
      try {
        const lib = Deno.dlopen(path, symbols);
        if (!accept(lib)) {
          lib.close();
          continue;
        }
        state = { lib, path };
        break;
      } catch {
        // Missing, too old, wrong architecture: try the next one.
      }
    }
    return state;
  };
  return {
    symbols: () => load()?.lib.symbols ?? null,
    path: () => load()?.path ?? candidates.find((p) => isFile(p, false)) ?? null,
  };
}
