// Giving up root for good: the worker that handles network input runs as an unprivileged user.
//
// glibc's set*id wrappers apply the change to every thread of the process (Deno runs several),
// and NO_NEW_PRIVS keeps an exec from gaining privileges back through setuid binaries.
// NO_NEW_PRIVS, unlike the IDs, is a per-thread flag: prctl sets it on the calling thread only.
// Installing an allow-everything seccomp filter with TSYNC copies the flag to every thread
// (the kernel does that as part of synchronising filters), and reports a thread it could not
// reach, so the whole process is covered.

import { addressOf, check, errno, libc, SysError } from "./libc.ts";

const PR_SET_NO_NEW_PRIVS = 38;
const PR_GET_NO_NEW_PRIVS = 39;
const SECCOMP_SET_MODE_FILTER = 1;
const SECCOMP_FILTER_FLAG_TSYNC = 1;
const SYS_SECCOMP: Record<string, bigint> = { x86_64: 317n, aarch64: 277n };
/** One classic-BPF instruction, BPF_RET|BPF_K with SECCOMP_RET_ALLOW: allows every call. */
const ALLOW_ALL_FILTER = [0x06, 0, 0, 0, 0x00, 0x00, 0xff, 0x7f];
const ERANGE = 34;
/** sizeof(struct passwd) on LP64 glibc, and where its fields sit. */
const PASSWD_SIZE = 48;
const PW_NAME = 0;
const PW_UID = 16;
const PW_GID = 20;
const PW_DIR = 32;
const PW_SHELL = 40;
const MAX_PWBUF = 1 << 20;

export interface UserInfo {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

/** Looks a user up in the system's user database (getpwnam_r, so NSS applies). */
export function lookupUser(name: string): UserInfo {
  const nameZ = new TextEncoder().encode(name + "\0");
  if (name.length === 0 || nameZ.indexOf(0) !== nameZ.length - 1) {
    throw new RangeError(`"${name}" is not a valid user name`);
  }
  const pwd = new Uint8Array(PASSWD_SIZE);
  const result = new Uint8Array(8);
  for (let size = 1024; size <= MAX_PWBUF; size *= 4) {
    // The strings land in `buf`; the struct's pointers are turned back into offsets into it.
    const buf = new Uint8Array(new ArrayBuffer(size));
    const rc = libc().getpwnam_r(nameZ, pwd, buf, BigInt(size), result);
    if (rc === ERANGE) continue;
    if (rc !== 0) throw new SysError(`getpwnam_r("${name}")`, rc);
    if (new DataView(result.buffer).getBigUint64(0, true) === 0n) {
      throw new Error(`user "${name}" does not exist`);
    }
    const base = addressOf(buf);
    const fields = new DataView(pwd.buffer);
    const str = (at: number): string => {
      const p = fields.getBigUint64(at, true);
      if (p === 0n) return "";
      const off = Number(p - base);
      if (off < 0 || off >= size) {
        throw new Error("getpwnam_r returned a pointer outside its buffer");
      }
      const end = buf.indexOf(0, off);
      return new TextDecoder().decode(buf.subarray(off, end < 0 ? size : end));
    };
    return {
      name: str(PW_NAME),
      uid: fields.getUint32(PW_UID, true),
      gid: fields.getUint32(PW_GID, true),
      home: str(PW_DIR),
      shell: str(PW_SHELL),
    };
  }
  throw new Error(`getpwnam_r("${name}"): entry larger than ${MAX_PWBUF} bytes`);
}

export interface Credentials {
  /** Real, effective and saved user IDs. */
  uid: [number, number, number];
  /** Real, effective and saved group IDs. */
  gid: [number, number, number];
  groups: number[];
}

/** The calling process's user and group IDs. */
export function currentCredentials(): Credentials {
  const a = new Uint32Array(3);
  const ids = (call: string, fn: (r: Uint8Array, e: Uint8Array, s: Uint8Array) => number) => {
    const r = new Uint8Array(a.buffer, 0, 4);
    const e = new Uint8Array(a.buffer, 4, 4);
    const s = new Uint8Array(a.buffer, 8, 4);
    check(call, fn(r, e, s));
    return [a[0], a[1], a[2]] as [number, number, number];
  };
  const uid = ids("getresuid", (r, e, s) => libc().getresuid(r, e, s));
  const gid = ids("getresgid", (r, e, s) => libc().getresgid(r, e, s));
  const list = new Uint32Array(256);
  const n = check("getgroups", libc().getgroups(list.length, new Uint8Array(list.buffer)));
  return { uid, gid, groups: Array.from(list.subarray(0, n)) };
}

/** Spreads the calling thread's NO_NEW_PRIVS to all threads (see the top of this file). */
function noNewPrivsForAllThreads(): void {
  const nr = SYS_SECCOMP[Deno.build.arch];
  if (nr === undefined) {
    throw new PrivilegeDropError(`no seccomp system call number for ${Deno.build.arch}`);
  }
  // The filter and struct sock_fprog {u16 len; struct sock_filter *filter} must stay put
  // during the call: both are ArrayBuffers, and the kernel copies the program.
  const filter = new Uint8Array(new ArrayBuffer(8));
  filter.set(ALLOW_ALL_FILTER);
  const prog = new Uint8Array(new ArrayBuffer(16));
  const dv = new DataView(prog.buffer);
  dv.setUint16(0, 1, true);
  dv.setBigUint64(8, addressOf(filter), true);
  const r = Number(
    libc().syscallPtr(nr, BigInt(SECCOMP_SET_MODE_FILTER), BigInt(SECCOMP_FILTER_FLAG_TSYNC), prog),
  );
  if (r === 0) return;
  if (r > 0) throw new PrivilegeDropError(`seccomp TSYNC could not reach thread ${r}`);
  throw new PrivilegeDropError(
    `dropping privileges failed: ${new SysError("seccomp(TSYNC)", errno()).message}`,
  );
}

/** Raised when privileges could not be dropped completely; the process must not go on. */
export class PrivilegeDropError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PrivilegeDropError";
  }
}

/**
 * Permanently switches the whole process to `uid`/`gid` (real, effective and saved), with `gid`
 * as the only supplementary group, after setting NO_NEW_PRIVS. Then checks the result, including
 * that root cannot be regained; any failure throws PrivilegeDropError, after which the caller
 * must exit rather than carry on half-privileged.
 */
export function dropPrivileges(uid: number, gid: number): void {
  for (const [what, id] of [["uid", uid], ["gid", gid]] as const) {
    if (!Number.isInteger(id) || id < 0 || id >= 0xffffffff) {
      throw new RangeError(`${what} ${id} is not a valid ID`);
    }
  }
  if (uid === 0 || gid === 0) throw new PrivilegeDropError("refusing to 'drop' to uid/gid 0");
  const fail = (call: string): never => {
    const e = new SysError(call, errno());
    throw new PrivilegeDropError(`dropping privileges failed: ${e.message}`);
  };
  const c = libc();
  if (c.prctl(PR_SET_NO_NEW_PRIVS, 1n, 0n, 0n, 0n) !== 0) fail("prctl(PR_SET_NO_NEW_PRIVS)");
  noNewPrivsForAllThreads();
  // Groups first: changing them needs the privileges the uid change gives up.
  if (c.setgroups(1n, new Uint8Array(new Uint32Array([gid]).buffer)) !== 0) fail("setgroups");
  if (c.setresgid(gid, gid, gid) !== 0) fail(`setresgid(${gid})`);
  if (c.setresuid(uid, uid, uid) !== 0) fail(`setresuid(${uid})`);

  const now = currentCredentials();
  const problems: string[] = [];
  if (now.uid.some((id) => id !== uid)) problems.push(`user IDs are ${now.uid.join("/")}`);
  if (now.gid.some((id) => id !== gid)) problems.push(`group IDs are ${now.gid.join("/")}`);
  if (now.groups.some((g) => g !== gid)) problems.push(`groups are ${now.groups.join(",")}`);
  if (c.getuid() !== uid || c.geteuid() !== uid || c.getgid() !== gid) {
    problems.push("getuid/geteuid/getgid disagree");
  }
  if (c.prctl(PR_GET_NO_NEW_PRIVS, 0n, 0n, 0n, 0n) !== 1) problems.push("NO_NEW_PRIVS is not set");
  if (c.setuid(0) === 0) problems.push("setuid(0) still succeeds");
  if (c.setgid(0) === 0) problems.push("setgid(0) still succeeds");
  if (problems.length > 0) {
    throw new PrivilegeDropError(`privileges not fully dropped: ${problems.join("; ")}`);
  }
}
