// Process plumbing for privilege separation: a root parent spawns the unprivileged worker with
// chosen descriptors at fixed numbers, and the two talk over a SOCK_SEQPACKET socket pair
// (message boundaries kept, in-order, reliable, peer death seen as end-of-file).
//
// posix_spawn takes char*[] arrays. Without Deno.UnsafePointer (the FFI permission is narrowed
// to libc) we cannot take pointers to JS buffers directly, so the strings and the pointer table
// share one ArrayBuffer: its address comes from libc's memcpy (see addressOf in libc.ts), the
// table is filled with that address plus each string's offset, and the buffer stays referenced
// until posix_spawn returns. ArrayBuffer backing stores never move, so the pointers hold.

import {
  addressOf,
  check,
  cstr,
  EAGAIN,
  EINTR,
  EMSGSIZE,
  errno,
  ETIMEDOUT,
  libc,
  SysError,
  waitReadable,
  waitWritable,
} from "./libc.ts";

const AF_UNIX = 1;
const SOCK_SEQPACKET = 5;
const SOCK_CLOEXEC = 0o2000000;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const WNOHANG = 1;
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
/** Generous upper bounds of glibc's posix_spawn_file_actions_t (80) and posix_spawnattr_t (336). */
const FILE_ACTIONS_SIZE = 256;
const SPAWNATTR_SIZE = 1024;
const SIGSET_SIZE = 128;

/** Largest message a SeqPacketChannel carries. */
export const MAX_MESSAGE = 65536;

/** Lays out NUL-terminated strings and NULL-terminated pointer tables in one pinned buffer. */
function stringTables(lists: string[][]): { mem: Uint8Array; tables: Uint8Array[] } {
  const encoder = new TextEncoder();
  const encoded = lists.map((l) =>
    l.map((s) => {
      if (s.includes("\0")) throw new RangeError(`argument contains NUL: ${JSON.stringify(s)}`);
      return encoder.encode(s);
    })
  );
  const pointerBytes = encoded.reduce((n, l) => n + (l.length + 1) * 8, 0);
  const stringBytes = encoded.reduce((n, l) => n + l.reduce((m, s) => m + s.length + 1, 0), 0);
  const mem = new Uint8Array(new ArrayBuffer(pointerBytes + stringBytes));
  const view = new DataView(mem.buffer);
  const base = addressOf(mem);
  const tables: Uint8Array[] = [];
  let tableAt = 0;
  let stringAt = pointerBytes;
  for (const list of encoded) {
    tables.push(mem.subarray(tableAt));
    for (const s of list) {
      mem.set(s, stringAt); // the byte after it is already 0
      view.setBigUint64(tableAt, base + BigInt(stringAt), true);
      tableAt += 8;
      stringAt += s.length + 1;
    }
    tableAt += 8; // the terminating NULL, already 0
  }
  return { mem, tables };
}

function fail(call: string, rc: number): never {
  throw new SysError(call, rc);
}

/**
 * Starts `path` (not searched in PATH) with `argv` (argv[0] included) and `env`, and returns its
 * pid. Each [from, to] in `fdMap` makes the parent's descriptor `from` appear as `to` in the
 * child, without close-on-exec; every other descriptor is inherited only if it lacks
 * close-on-exec. The child starts with all signals at their default action and none blocked.
 */
export function spawnWithFds(
  path: string,
  argv: string[],
  env: Record<string, string> | string[],
  fdMap: Array<[number, number]>,
): number {
  const envList = Array.isArray(env) ? env : Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const targets = new Set<number>();
  for (const [from, to] of fdMap) {
    if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to < 0) {
      throw new RangeError(`bad descriptor mapping [${from}, ${to}]`);
    }
    if (targets.has(to)) throw new RangeError(`descriptor ${to} is mapped twice`);
    targets.add(to);
  }
  const c = libc();
  const actions = new Uint8Array(new ArrayBuffer(FILE_ACTIONS_SIZE));
  const attr = new Uint8Array(new ArrayBuffer(SPAWNATTR_SIZE));
  let rc = c.posix_spawn_file_actions_init(actions);
  if (rc !== 0) fail("posix_spawn_file_actions_init", rc);
  try {
    rc = c.posix_spawnattr_init(attr);
    if (rc !== 0) fail("posix_spawnattr_init", rc);
    try {
      // Two rounds through scratch numbers above every descriptor involved, so a mapping can
      // neither overwrite another's source (e.g. [[4, 3], [3, 4]]) nor be a no-op dup2 that
      // would leave close-on-exec set (from === to).
      const scratch = Math.max(0, ...fdMap.flat()) + 1;
      fdMap.forEach(([from], i) => {
        rc = c.posix_spawn_file_actions_adddup2(actions, from, scratch + i);
        if (rc !== 0) fail(`posix_spawn_file_actions_adddup2(${from})`, rc);
      });
      fdMap.forEach(([, to], i) => {
        rc = c.posix_spawn_file_actions_adddup2(actions, scratch + i, to);
        if (rc !== 0) fail(`posix_spawn_file_actions_adddup2(${to})`, rc);
        rc = c.posix_spawn_file_actions_addclose(actions, scratch + i);
        if (rc !== 0) fail("posix_spawn_file_actions_addclose", rc);
      });
      // Ignored signals survive exec (Deno ignores SIGPIPE); the child should start clean.
      const defaults = new Uint8Array(SIGSET_SIZE);
      // Bit n-1 stands for signal n: 1..31 except SIGKILL (9) and SIGSTOP (19).
      new DataView(defaults.buffer).setUint32(0, 0x7fffffff & ~(1 << 8) & ~(1 << 18), true);
      const emptyMask = new Uint8Array(SIGSET_SIZE);
      rc = c.posix_spawnattr_setsigdefault(attr, defaults);
      if (rc !== 0) fail("posix_spawnattr_setsigdefault", rc);
      rc = c.posix_spawnattr_setsigmask(attr, emptyMask);
      if (rc !== 0) fail("posix_spawnattr_setsigmask", rc);
      rc = c.posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
      if (rc !== 0) fail("posix_spawnattr_setflags", rc);

      const { mem, tables } = stringTables([argv, envList]);
      const pid = new Int32Array(1);
      rc = c.posix_spawn(
        new Uint8Array(pid.buffer),
        cstr(path),
        actions,
        attr,
        tables[0],
        tables[1],
      );
      mem.fill(0); // keeps `mem` referenced until here; also scrubs the environment copy
      if (rc !== 0) fail(`posix_spawn(${path})`, rc);
      return pid[0];
    } finally {
      c.posix_spawnattr_destroy(attr);
    }
  } finally {
    c.posix_spawn_file_actions_destroy(actions);
  }
}

export interface ChildExit {
  pid: number;
  /** Exit status when the child exited, else null. */
  code: number | null;
  /** Number of the signal that killed it, else null. */
  signal: number | null;
}

/** Reaps `pid` if it has ended; null while it still runs. */
export function tryWaitChild(pid: number): ChildExit | null {
  const status = new Int32Array(1);
  for (;;) {
    const r = libc().waitpid(pid, new Uint8Array(status.buffer), WNOHANG);
    if (r === 0) return null;
    if (r < 0) {
      const code = errno();
      if (code === EINTR) continue;
      throw new SysError(`waitpid(${pid})`, code);
    }
    const s = status[0];
    const sig = s & 0x7f;
    return sig === 0
      ? { pid, code: (s >> 8) & 0xff, signal: null }
      : { pid, code: null, signal: sig };
  }
}

/**
 * Waits for `pid` to end and reaps it, polling with WNOHANG (backing off to 100 ms) so that no
 * thread is held and the wait can time out. Returns null if `timeoutMs` passes first.
 */
export async function waitChild(pid: number, timeoutMs = Infinity): Promise<ChildExit | null> {
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  for (;;) {
    const exit = tryWaitChild(pid);
    if (exit) return exit;
    const left = deadline - Date.now();
    if (left <= 0) return null;
    await new Promise((resolve) => setTimeout(resolve, Math.min(delay, left)));
    delay = Math.min(delay * 2, 100);
  }
}

/** Sends a signal (default SIGTERM) to a process. */
export function killChild(pid: number, signal = 15): void {
  check(`kill(${pid}, ${signal})`, libc().kill(pid, signal));
}

/** A connected AF_UNIX SOCK_SEQPACKET pair, both ends close-on-exec. */
export function socketPair(): [number, number] {
  const fds = new Int32Array(2);
  check(
    "socketpair(AF_UNIX, SOCK_SEQPACKET)",
    libc().socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, new Uint8Array(fds.buffer)),
  );
  return [fds[0], fds[1]];
}

export function closeFd(fd: number): void {
  check(`close(${fd})`, libc().close(fd));
}

/**
 * Whole messages (1..MAX_MESSAGE bytes) over a SOCK_SEQPACKET descriptor. Calls never block the
 * JS thread (MSG_DONTWAIT, so the descriptor's own O_NONBLOCK flag, shared with the other
 * process's copy, is left alone). Empty messages are not allowed: they would read as end-of-file.
 */
export class SeqPacketChannel {
  #fd: number;
  #buf = new Uint8Array(MAX_MESSAGE);

  constructor(fd: number) {
    this.#fd = fd;
  }

  get fd(): number {
    return this.#fd;
  }

  /** Sends one message if there is room now; false if the socket buffer is full. */
  trySend(message: Uint8Array): boolean {
    if (message.length === 0 || message.length > MAX_MESSAGE) {
      throw new RangeError(`message length ${message.length} not in 1..${MAX_MESSAGE}`);
    }
    if (this.#fd < 0) throw new Error("channel is closed");
    for (;;) {
      const n = Number(
        libc().send(this.#fd, message, BigInt(message.length), MSG_DONTWAIT | MSG_NOSIGNAL),
      );
      if (n >= 0) return true;
      const code = errno();
      if (code === EINTR) continue;
      if (code === EAGAIN) return false;
      throw new SysError("send(seqpacket)", code);
    }
  }

  /** Sends one message, waiting up to `timeoutMs` for room. Throws EPIPE if the peer is gone. */
  async send(message: Uint8Array, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.trySend(message)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new SysError("send(seqpacket)", ETIMEDOUT);
      await waitWritable(this.#fd, Math.min(left, 1000));
    }
  }

  /** One queued message, null at end-of-file (peer closed), undefined if nothing is queued. */
  tryRecv(): Uint8Array | null | undefined {
    if (this.#fd < 0) throw new Error("channel is closed");
    for (;;) {
      const n = Number(
        libc().recv(this.#fd, this.#buf, BigInt(this.#buf.length), MSG_DONTWAIT | MSG_TRUNC),
      );
      if (n > MAX_MESSAGE) throw new SysError(`recv(seqpacket): ${n}-byte message`, EMSGSIZE);
      if (n > 0) return this.#buf.slice(0, n);
      if (n === 0) return null;
      const code = errno();
      if (code === EINTR) continue;
      if (code === EAGAIN) return undefined;
      throw new SysError("recv(seqpacket)", code);
    }
  }

  /** Next message, or null once the peer has closed; throws ETIMEDOUT after `timeoutMs`. */
  async recv(timeoutMs = Infinity): Promise<Uint8Array | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.tryRecv();
      if (m !== undefined) return m;
      const left = deadline - Date.now();
      if (left <= 0) throw new SysError("recv(seqpacket)", ETIMEDOUT);
      // Bounded slices, so a close() from elsewhere is noticed.
      await waitReadable(this.#fd, Math.min(left, 1000));
      if (this.#fd < 0) throw new Error("channel is closed");
    }
  }

  close(): void {
    if (this.#fd >= 0) libc().close(this.#fd);
    this.#fd = -1;
  }
}
