// Whether an existing runtime directory is one a client made. The client supervisor hands its
// runtime directory to the worker's group, sets its mode and removes it at exit: done to a
// directory named by mistake (`--runtime-dir /etc`), that would open it to the worker's group
// and could remove it. So a directory that was there before the client is used only when it is
// a client's own leftover (a client killed before its clean-up): root's, the worker's group, the
// client's mode, and nothing in it but what a client puts there.

import { RUNTIME_DIR_MODE } from "./instance_lock.ts";

/** The worker's control socket, in the runtime directory. */
export const CONTROL_SOCKET = "client.sock";

/** What a client left in its runtime directory: the control socket, and older builds' lock. */
export const CLIENT_LEFTOVERS: ReadonlyMap<string, "socket" | "file"> = new Map([
  [CONTROL_SOCKET, "socket"],
  ["client.lock", "file"],
]);

/** Modes a client gave its runtime directory: today's, and 0770 of builds before the
 * directory itself was the lock. */
const CLIENT_MODES = [RUNTIME_DIR_MODE, 0o770];

export interface DirFacts {
  isSymlink: boolean;
  isDirectory: boolean;
  uid: number;
  gid: number;
  /** The permission bits (and set-id and sticky bits). */
  mode: number;
  entries: { name: string; kind: "socket" | "file" | "directory" | "symlink" | "other" }[];
}

/**
 * Why a directory that existed before the client started is not a client's own (null when it
 * is), with the worker's group `gid`.
 */
export function foreignDirReason(facts: DirFacts, gid: number): string | null {
  if (facts.isSymlink) return "it is a symbolic link";
  if (!facts.isDirectory) return "it is not a directory";
  if (facts.uid !== 0) return `its owner is uid ${facts.uid}, not root`;
  if (facts.gid !== gid) return `its group is gid ${facts.gid}, not the worker's (${gid})`;
  const mode = facts.mode & 0o7777;
  if (!CLIENT_MODES.includes(mode)) {
    return `its mode is 0${mode.toString(8)}, not 0${RUNTIME_DIR_MODE.toString(8)}`;
  }
  const others = facts.entries.filter((e) => CLIENT_LEFTOVERS.get(e.name) !== e.kind);
  if (others.length > 0) {
    const names = others.slice(0, 3).map((e) => e.name).join(", ");
    return `it holds what no client put there (${names}${others.length > 3 ? ", ..." : ""})`;
  }
  return null;
}

/** Whether `path` is a symbolic link (false when there is nothing by that name). */
export function isSymlink(path: string): boolean {
  try {
    return Deno.lstatSync(path).isSymlink;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The facts of `dir` (not following a symbolic link), for foreignDirReason. */
export function dirFacts(dir: string): DirFacts {
  const info = Deno.lstatSync(dir);
  const entries: DirFacts["entries"] = [];
  if (info.isDirectory) {
    for (const e of Deno.readDirSync(dir)) {
      const kind = e.isDirectory
        ? "directory"
        : e.isSymlink
        ? "symlink"
        : e.isFile
        ? "file"
        : Deno.lstatSync(`${dir}/${e.name}`).isSocket
        ? "socket"
        : "other"; // a FIFO or a device
      entries.push({ name: e.name, kind });
    }
  }
  return {
    isSymlink: info.isSymlink,
    isDirectory: info.isDirectory,
    uid: info.uid ?? -1,
    gid: info.gid ?? -1,
    mode: info.mode ?? 0,
    entries,
  };
}
