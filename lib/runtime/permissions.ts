// The Deno permissions of every command, in one place. The deno.json tasks, the launcher
// ./pqconnect and the table in doc/permissions.md are written from here by
// scripts/permissions.ts, and tests/permissions_test.ts fails when one of them drifts; the
// client supervisor builds its worker's flags here. doc/permissions.md says why each is needed.

import { LIBC_CANDIDATES } from "../../ffi/libc.ts";
import { SODIUM_CANDIDATES } from "../../ffi/sodium.ts";
import { NETTLE_CANDIDATES } from "../../ffi/nettle.ts";
import { kemLibraryPaths } from "../../ffi/kem_native.ts";

/** The C library and libsodium on this platform's layouts (x86_64 Debian/Ubuntu). */
export const LIBC_PATHS = LIBC_CANDIDATES.filter((p) => p.includes("/x86_64-linux-gnu/"));
export const SODIUM_PATHS = SODIUM_CANDIDATES.filter((p) => p.includes("/x86_64-linux-gnu/"));
/** Nettle, for a native SHAKE256 (optional like libsodium). */
export const NETTLE_PATHS = NETTLE_CANDIDATES.filter((p) => p.includes("/x86_64-linux-gnu/"));
/** The native KEM libraries, wherever the loader (ffi/kem_native.ts) may find them. */
export const KEM_PATHS = kemLibraryPaths();

/** Where findTool (firewall.ts) looks for nft and iptables, in its order. */
export const TOOL_DIRS = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
export const FIREWALL_TOOLS = ["nft", "iptables"].flatMap((t) => TOOL_DIRS.map((d) => `${d}/${t}`));

/** The environment the client supervisor passes on to its worker. */
export const WORKER_ENV = ["PATH", "HOME", "DENO_DIR", "NO_COLOR", "LANG"];

/** The directories a command's permissions are scoped to. */
export interface Places {
  keyDir: string;
  runtimeDir: string;
  /** The code itself (the repository root): the crypto worker module is read from there. */
  code: string;
  /** Whether the key directory was named on the command line (`check` reads it only then). */
  keyDirGiven?: boolean;
}

export const DEFAULT_PLACES: Places = {
  keyDir: "/etc/pqconnect/keys",
  runtimeDir: "/run/pqconnect-ts",
  code: ".",
};

export type PermissionCommand = "server" | "client" | "keygen" | "announce" | "status" | "check";
export const PERMISSION_COMMANDS: PermissionCommand[] = [
  "server",
  "client",
  "keygen",
  "announce",
  "status",
  "check",
];

const FFI = [...LIBC_PATHS, ...SODIUM_PATHS, ...NETTLE_PATHS, ...KEM_PATHS];

/** The flags one command runs with (besides --no-prompt). */
export function commandFlags(command: PermissionCommand, at: Places): string[] {
  switch (command) {
    case "server":
      return [
        `--allow-read=${at.keyDir},${at.code}`,
        `--allow-ffi=${FFI.join(",")}`,
        "--allow-sys=uid",
      ];
    case "client":
      return [
        `--allow-read=${at.runtimeDir},${FIREWALL_TOOLS.join(",")}`,
        `--allow-write=${at.runtimeDir}`,
        `--allow-run=${FIREWALL_TOOLS.join(",")}`,
        `--allow-ffi=${FFI.join(",")}`,
        "--allow-sys=uid",
        `--allow-env=${WORKER_ENV.join(",")}`,
      ];
    case "keygen":
      // The native McEliece key pair when the libraries load (the WASM one needs nothing).
      return [
        `--allow-read=${at.keyDir}`,
        `--allow-write=${at.keyDir}`,
        `--allow-ffi=${KEM_PATHS.join(",")}`,
      ];
    case "announce":
      return [`--allow-read=${at.keyDir}`];
    case "status":
      return [
        `--allow-read=${at.runtimeDir}`,
        `--allow-write=${at.runtimeDir}`,
        `--allow-net=unix:${at.runtimeDir}/client.sock`,
      ];
    case "check":
      // DNS, the key server and the tunnel; the local key files only when -d names them.
      return ["--allow-net", ...(at.keyDirGiven ? [`--allow-read=${at.keyDir}`] : [])];
  }
}

/** The client worker's flags: the libraries the supervisor loaded, no programs, no firewall. */
export function workerFlags(ffi: string[], at: Places): string[] {
  return [
    `--allow-ffi=${ffi.join(",")}`,
    `--allow-read=${at.code},${at.runtimeDir}`,
    `--allow-write=${at.runtimeDir}`,
    "--allow-net",
  ];
}

/**
 * A compiled binary carries one set of permissions for every command: the union, at the
 * default places (the worker is the same binary; it resolves DNS through the system's
 * resolver, hence --allow-net unscoped).
 */
export function compileFlags(at: Places): string[] {
  return [
    `--allow-read=${at.keyDir},${at.runtimeDir},${FIREWALL_TOOLS.join(",")}`,
    `--allow-write=${at.keyDir},${at.runtimeDir}`,
    `--allow-run=${FIREWALL_TOOLS.join(",")}`,
    `--allow-ffi=${FFI.join(",")}`,
    "--allow-sys=uid",
    `--allow-env=${WORKER_ENV.join(",")}`,
    "--allow-net",
  ];
}
