// The server's key directory, in the reference's format: raw bytes, one file per key, secret
// files 0600, public ones 0644, directory 0700 (the reference's 0755 too), all the server's. Keeping these files keeps a server's pq1 name.

import {
  KEY_BYTES,
  MCELIECE_PK_BYTES,
  MCELIECE_SK_BYTES,
  X25519_BYTES,
} from "../core/constants.ts";
import { equalBytes, wipe } from "../core/bytes.ts";
import { x25519PublicKey } from "../core/crypto.ts";

export const KEY_FILES = {
  mceliece_pk: { bytes: MCELIECE_PK_BYTES, secret: false },
  mceliece_sk: { bytes: MCELIECE_SK_BYTES, secret: true },
  x25519_pk: { bytes: X25519_BYTES, secret: false },
  x25519_sk: { bytes: X25519_BYTES, secret: true },
  session_key: { bytes: KEY_BYTES, secret: true },
} as const;

export type KeyFileName = keyof typeof KEY_FILES;

export interface ServerKeys {
  mceliecePk: Uint8Array;
  mcelieceSk: Uint8Array;
  x25519Pk: Uint8Array;
  x25519Sk: Uint8Array;
  sessionKey: Uint8Array;
}

/** A problem with the key directory, worded for the person running the command. */
export class KeyFileError extends Error {
  override name = "KeyFileError";
}

function join(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

export function readKeyFile(dir: string, name: KeyFileName): Uint8Array {
  const path = join(dir, name);
  let data: Uint8Array;
  try {
    data = Deno.readFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new KeyFileError(`${path} does not exist (run "pqconnect keygen --keydir ${dir}")`);
    }
    if (e instanceof Deno.errors.NotCapable) {
      // Deno's sandbox, not the file: the deno.json tasks may read /etc/pqconnect/keys only.
      throw new KeyFileError(
        `${path}: outside what this command may read (Deno's --allow-read); ./pqconnect ` +
          `allows the directory given with -d`,
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new KeyFileError(`${path}: permission denied (run as the key files' owner, or root)`);
    }
    throw new KeyFileError(`${path}: ${(e as Error).message}`);
  }
  const expected = KEY_FILES[name].bytes;
  if (data.length !== expected) {
    wipe(data);
    throw new KeyFileError(
      `${path} has ${data.length} bytes, expected ${expected}: not a PQConnect ${name} file`,
    );
  }
  return data;
}

/** The public keys, enough to compute the server's name. */
export function readPublicKeys(dir: string): { mceliecePk: Uint8Array; x25519Pk: Uint8Array } {
  return { mceliecePk: readKeyFile(dir, "mceliece_pk"), x25519Pk: readKeyFile(dir, "x25519_pk") };
}

/** All server keys, checked for their files' modes and owners, for size and for the X25519 pair matching. */
export function readServerKeys(dir: string): ServerKeys {
  refuseLooseKeyFiles(dir);
  const keys = {
    mceliecePk: readKeyFile(dir, "mceliece_pk"),
    mcelieceSk: readKeyFile(dir, "mceliece_sk"),
    x25519Pk: readKeyFile(dir, "x25519_pk"),
    x25519Sk: readKeyFile(dir, "x25519_sk"),
    sessionKey: readKeyFile(dir, "session_key"),
  };
  if (!equalBytes(x25519PublicKey(keys.x25519Sk), keys.x25519Pk)) {
    wipeServerKeys(keys);
    throw new KeyFileError(`${dir}: x25519_sk does not belong to x25519_pk`);
  }
  return keys;
}

export function wipeServerKeys(keys: ServerKeys): void {
  wipe(keys.mcelieceSk, keys.x25519Sk, keys.sessionKey);
}

/**
 * Writes a new key set. Refuses to replace existing files unless `force`; creates the directory
 * 0700. Secret files are created 0600 (and chmod-ed, in case they existed with another mode).
 */
export function writeServerKeys(dir: string, keys: ServerKeys, force: boolean): void {
  makeKeyDir(dir);
  const files: Record<KeyFileName, Uint8Array> = {
    mceliece_pk: keys.mceliecePk,
    mceliece_sk: keys.mcelieceSk,
    x25519_pk: keys.x25519Pk,
    x25519_sk: keys.x25519Sk,
    session_key: keys.sessionKey,
  };
  if (!force) refuseOverwrite(dir);
  // Secrets first, public keys last: a crash midway never leaves a public key without its
  // matching secret.
  const order: KeyFileName[] = [
    "mceliece_sk",
    "x25519_sk",
    "session_key",
    "mceliece_pk",
    "x25519_pk",
  ];
  for (const name of order) {
    const path = join(dir, name);
    const mode = KEY_FILES[name].secret ? 0o600 : 0o644;
    try {
      Deno.writeFileSync(path, files[name], { mode });
      Deno.chmodSync(path, mode);
    } catch (e) {
      throw new KeyFileError(`cannot write ${path}: ${(e as Error).message}`);
    }
  }
  try {
    Deno.chmodSync(dir, 0o700);
  } catch { /* a directory we do not own: leave its mode alone */ }
}

/** Creates the key directory 0700 if it is missing (also before the slow key generation). */
export function makeKeyDir(dir: string): void {
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new KeyFileError(`cannot create ${dir}: ${(e as Error).message}`);
  }
}

/**
 * What is wrong with the key directory and its files, for a server running as `uid` (root when
 * it reads them): each secret file that others than its owner may read or write (the reference
 * and keygen write them 0600), each public file that group or others may write (clients check
 * them against the server's DNS name: whoever may replace them may swap the server's identity;
 * the reference and keygen write them 0644), any of these files or the directory owned by another
 * user than `uid` (the owner may do all of that whatever the mode), and a directory others may
 * write to without the sticky bit (they could swap in keys of their own; the reference's 0755 and
 * keygen's 0700 are fine). Files that cannot be looked at are left to readKeyFile to report.
 */
export function looseKeyFiles(dir: string, uid: number | null = Deno.uid()): string[] {
  const problems: string[] = [];
  const dirStat = statOf(dir);
  if (dirStat !== null) {
    const notOwned = foreignOwner(dir, dirStat, uid, "could replace the keys");
    if (notOwned) problems.push(notOwned);
    if ((dirStat.mode & 0o022) !== 0 && (dirStat.mode & 0o1000) === 0) {
      problems.push(
        `${dir} is mode ${octal(dirStat.mode)}: others than its owner could replace the keys ` +
          `(chmod go-w ${dir})`,
      );
    }
  }
  for (const [name, file] of Object.entries(KEY_FILES)) {
    const path = join(dir, name);
    const st = statOf(path);
    if (st === null) continue;
    const notOwned = foreignOwner(
      path,
      st,
      uid,
      file.secret ? "may read and replace this secret key" : "could replace the server's identity",
    );
    if (notOwned) problems.push(notOwned);
    if (file.secret && (st.mode & 0o077) !== 0) {
      problems.push(
        `${path} is mode ${octal(st.mode)}: a secret key should be readable by its owner only ` +
          `(chmod 600 ${path})`,
      );
    } else if (!file.secret && (st.mode & 0o022) !== 0) {
      problems.push(
        `${path} is mode ${octal(st.mode)}: others than its owner could replace the server's ` +
          `public key, and with it the identity clients verify (chmod go-w ${path})`,
      );
    }
  }
  return problems;
}

/** The problem when `path` belongs to another user than `uid` (null: `uid` unknown, or owner). */
function foreignOwner(
  path: string,
  st: { uid: number | null },
  uid: number | null,
  risk: string,
): string | null {
  if (uid === null || st.uid === null || st.uid === uid) return null;
  const user = uid === 0 ? "root" : `uid ${uid}`;
  return `${path} is owned by uid ${st.uid}, not by ${user} that the server runs as: that user ` +
    `${risk} (chown ${uid === 0 ? "root" : uid} ${path})`;
}

/** Throws, naming every file and the fix, when looseKeyFiles finds anything (as ssh does with a
 * private key others may read: the key may already be known to them). */
export function refuseLooseKeyFiles(dir: string): void {
  const problems = looseKeyFiles(dir);
  if (problems.length === 0) return;
  throw new KeyFileError(
    `refusing to use these keys:\n  ${problems.join("\n  ")}\n` +
      `If others could read a secret key, it may be known to them: consider new keys ` +
      `(pqconnect keygen --force, which changes the server's pq1 name).`,
  );
}

/** A path's mode and owner; null when it cannot be looked at (or has no mode to judge). */
function statOf(path: string): { mode: number; uid: number | null } | null {
  try {
    const { mode, uid } = Deno.statSync(path);
    return mode === null ? null : { mode, uid };
  } catch {
    return null;
  }
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, "0");
}

/** Throws unless `dir` is free of key files (checked before the slow key generation too). */
export function refuseOverwrite(dir: string): void {
  const existing = Object.keys(KEY_FILES).filter((name) => exists(join(dir, name)));
  if (existing.length > 0) {
    throw new KeyFileError(
      `${dir} already holds ${existing.join(", ")}; refusing to overwrite ` +
        `(a new key changes the server's pq1 name: use --force if that is intended)`,
    );
  }
}

/** Whether the path exists; when that cannot be told, an error: never overwrite a key in doubt. */
function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new KeyFileError(`cannot tell whether ${path} exists: ${(e as Error).message}`);
  }
}
