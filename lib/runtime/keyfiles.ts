// The server's key directory, in the reference's format: raw bytes, one file per key, secret
// files 0600, directory 0700. Keeping these files keeps a server's pq1 name.

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

/** All server keys, checked for their files' modes, for size and for the X25519 pair matching. */
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
 * What is wrong with the modes of the key directory and its secret files: each secret file that
 * others than its owner may read or write (the reference and keygen write them 0600), and a
 * directory others may write to without the sticky bit (they could swap in keys of their own;
 * the reference's 0755 and keygen's 0700 are fine). Files that cannot be looked at are left to
 * readKeyFile to report.
 */
export function looseSecretKeyFiles(dir: string): string[] {
  const problems: string[] = [];
  const dirMode = modeOf(dir);
  if (dirMode !== null && (dirMode & 0o022) !== 0 && (dirMode & 0o1000) === 0) {
    problems.push(
      `${dir} is mode ${octal(dirMode)}: others than its owner could replace the keys ` +
        `(chmod go-w ${dir})`,
    );
  }
  for (const [name, file] of Object.entries(KEY_FILES)) {
    if (!file.secret) continue;
    const path = join(dir, name);
    const mode = modeOf(path);
    if (mode !== null && (mode & 0o077) !== 0) {
      problems.push(
        `${path} is mode ${octal(mode)}: a secret key should be readable by its owner only ` +
          `(chmod 600 ${path})`,
      );
    }
  }
  return problems;
}

/** Throws, naming every file and the fix, when looseSecretKeyFiles finds anything (as ssh does
 * with a private key others may read: the key may already be known to them). */
export function refuseLooseKeyFiles(dir: string): void {
  const problems = looseSecretKeyFiles(dir);
  if (problems.length === 0) return;
  throw new KeyFileError(
    `refusing to use these keys:\n  ${problems.join("\n  ")}\n` +
      `If others could read a secret key, it may be known to them: consider new keys ` +
      `(pqconnect keygen --force, which changes the server's pq1 name).`,
  );
}

function modeOf(path: string): number | null {
  try {
    return Deno.statSync(path).mode;
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
