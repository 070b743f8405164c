// The one binding to the C library. Every system call the project makes goes through here, so
// the FFI permission can be narrowed to this single file (see LIBC_CANDIDATES).
//
// Blocking calls are never made on the JavaScript thread: descriptors are switched to
// O_NONBLOCK, drained with synchronous calls until EAGAIN, and readiness is awaited with
// `pollAsync`, which runs on Deno's blocking thread pool. One thread hop per batch of packets,
// not one per packet.

/** Where glibc lives on the Debian/Ubuntu layouts we support (first that loads wins). */
export const LIBC_CANDIDATES = [
  "/lib/x86_64-linux-gnu/libc.so.6",
  "/usr/lib/x86_64-linux-gnu/libc.so.6",
  "/lib/aarch64-linux-gnu/libc.so.6",
  "/usr/lib/aarch64-linux-gnu/libc.so.6",
  "/lib64/libc.so.6",
  "/usr/lib64/libc.so.6",
];

const SYMBOLS = {
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  // Reads through raw pointers go via memcpy/strlen: UnsafePointerView needs an unscoped
  // --allow-ffi, and we want the permission narrowed to this library.
  memcpy: { parameters: ["buffer", "pointer", "usize"], result: "pointer" },
  strlen: { parameters: ["pointer"], result: "usize" },
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  // ioctls whose argument is a value, not a pointer (TUNSETOFFLOAD).
  ioctlValue: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  pollAsync: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
  getuid: { parameters: [], result: "u32" },
  geteuid: { parameters: [], result: "u32" },
  getgid: { parameters: [], result: "u32" },
  getpid: { parameters: [], result: "i32" },
  setuid: { parameters: ["u32"], result: "i32" },
  setgid: { parameters: ["u32"], result: "i32" },
  setresuid: { parameters: ["u32", "u32", "u32"], result: "i32" },
  setresgid: { parameters: ["u32", "u32", "u32"], result: "i32" },
  setgroups: { parameters: ["usize", "buffer"], result: "i32" },
  getpwnam_r: {
    parameters: ["buffer", "buffer", "buffer", "usize", "buffer"],
    result: "i32",
  },
  prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
  kill: { parameters: ["i32", "i32"], result: "i32" },
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  posix_spawn: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  posix_spawn_file_actions_init: { parameters: ["buffer"], result: "i32" },
  posix_spawn_file_actions_destroy: { parameters: ["buffer"], result: "i32" },
  posix_spawn_file_actions_adddup2: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  posix_spawn_file_actions_addclose: { parameters: ["buffer", "i32"], result: "i32" },
  // Additions for ffi/{tun,rtnetlink,privdrop,spawn,udp}.ts.
  // memcpy(dst, dst, 0) returns dst: typed as an integer this yields a JS buffer's native
  // address without Deno.UnsafePointer (which needs an unscoped --allow-ffi). See addressOf.
  addressOf: { name: "memcpy", parameters: ["buffer", "buffer", "usize"], result: "usize" },
  // Native memory handled as plain integers, for the same reason.
  malloc: { parameters: ["usize"], result: "usize" },
  free: { parameters: ["usize"], result: "void" },
  copyToNative: { name: "memcpy", parameters: ["usize", "buffer", "usize"], result: "usize" },
  copyFromNative: { name: "memcpy", parameters: ["buffer", "usize", "usize"], result: "usize" },
  recvmmsgAt: {
    name: "recvmmsg",
    parameters: ["i32", "usize", "u32", "i32", "pointer"],
    result: "i32",
  },
  sendmmsgAt: { name: "sendmmsg", parameters: ["i32", "usize", "u32", "i32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getresuid: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  getresgid: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  getgroups: { parameters: ["i32", "buffer"], result: "i32" },
  posix_spawnattr_init: { parameters: ["buffer"], result: "i32" },
  posix_spawnattr_destroy: { parameters: ["buffer"], result: "i32" },
  posix_spawnattr_setflags: { parameters: ["buffer", "i16"], result: "i32" },
  posix_spawnattr_setsigdefault: { parameters: ["buffer", "buffer"], result: "i32" },
  posix_spawnattr_setsigmask: { parameters: ["buffer", "buffer"], result: "i32" },
  // syscall(nr, a, b, ptr) for calls glibc has no wrapper for (seccomp). glibc's syscall() is
  // plain assembly that shuffles registers, so declaring fixed parameters is sound.
  syscallPtr: { name: "syscall", parameters: ["i64", "i64", "i64", "buffer"], result: "i64" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let loaded:
  | { lib: Deno.DynamicLibrary<typeof SYMBOLS>; errnoPtr: Deno.PointerObject; path: string }
  | null = null;

function load() {
  if (loaded) return loaded;
  const failures: string[] = [];
  for (const path of LIBC_CANDIDATES) {
    try {
      const lib = Deno.dlopen(path, SYMBOLS);
      // errno is thread-local; synchronous FFI calls run on this (the JS) thread, so the
      // location read here is the one those calls set.
      const errnoPtr = lib.symbols.__errno_location();
      if (errnoPtr === null) throw new Error("__errno_location returned NULL");
      loaded = { lib, errnoPtr, path };
      return loaded;
    } catch (e) {
      failures.push(`${path}: ${(e as Error).message}`);
    }
  }
  throw new Error(`cannot load the C library:\n  ${failures.join("\n  ")}`);
}

/** Path of the C library in use: what `--allow-ffi` must name for a child process. */
export function libcPath(): string {
  return load().path;
}

/** The C library's functions (loaded on first use). */
export function libc(): Libc {
  return load().lib.symbols;
}

/** errno as left by the last synchronous call on this thread. */
export function errno(): number {
  const { lib, errnoPtr } = load();
  lib.symbols.memcpy(errnoCell, errnoPtr, 4n);
  return new Int32Array(errnoCell.buffer)[0];
}
const errnoCell = new Uint8Array(4);

/** Copies `length` bytes from native memory at `ptr`. */
export function copyFromPointer(ptr: Deno.PointerObject, length: number): Uint8Array {
  const out = new Uint8Array(length);
  if (length > 0) libc().memcpy(out, ptr, BigInt(length));
  return out;
}

/** Reads the NUL-terminated string at `ptr`. */
export function cstringAt(ptr: Deno.PointerObject): string {
  const n = Number(libc().strlen(ptr));
  return new TextDecoder().decode(copyFromPointer(ptr, n));
}

export const EAGAIN = 11;
export const EINTR = 4;
export const ENOBUFS = 105;
export const EEXIST = 17;
export const ENOENT = 2;
export const EPERM = 1;

/** An OS error carrying errno, with the C library's text for it. */
export class SysError extends Error {
  constructor(readonly call: string, readonly code: number) {
    super(`${call}: ${strerror(code)} (errno ${code})`);
    this.name = "SysError";
  }
}

export function strerror(code: number): string {
  const p = libc().strerror(code);
  return p === null ? `errno ${code}` : cstringAt(p);
}

/** Throws SysError when a call returned -1; otherwise returns the result as a number. */
export function check(call: string, result: number | bigint): number {
  const n = Number(result);
  if (n === -1) throw new SysError(call, errno());
  return n;
}

/** NUL-terminated copy of a string, for `buffer` parameters taking `const char *`. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const POLLIN = 1;
export const POLLOUT = 4;
export const POLLERR = 8;
export const POLLHUP = 16;

export function setNonBlocking(fd: number): void {
  const flags = check("fcntl(F_GETFL)", libc().fcntl(fd, F_GETFL, 0));
  check("fcntl(F_SETFL)", libc().fcntl(fd, F_SETFL, flags | O_NONBLOCK));
}

/**
 * Waits (off the JS thread) until `fd` is readable or `timeoutMs` passes.
 * Returns true when readable (or in error/hang-up, which the next read reports).
 */
export async function waitReadable(fd: number, timeoutMs: number): Promise<boolean> {
  const pfd = new Uint8Array(8);
  const view = new DataView(pfd.buffer);
  view.setInt32(0, fd, true);
  view.setInt16(4, POLLIN, true);
  const n = await libc().pollAsync(pfd, 1n, timeoutMs);
  if (n < 0) return false; // EINTR and friends: caller loops
  return n > 0;
}

/**
 * Waits (off the JS thread) until `fd` is writable or `timeoutMs` passes; true when writable
 * (or in error/hang-up, which the next write reports).
 */
export async function waitWritable(fd: number, timeoutMs: number): Promise<boolean> {
  const pfd = new Uint8Array(8);
  const view = new DataView(pfd.buffer);
  view.setInt32(0, fd, true);
  view.setInt16(4, POLLOUT, true);
  const n = await libc().pollAsync(pfd, 1n, timeoutMs);
  if (n < 0) return false;
  return n > 0;
}

/**
 * Native address of a buffer's first byte (its byteOffset included).
 *
 * Only meaningful for memory that cannot move: allocate with `new ArrayBuffer(n)` (V8 keeps every
 * ArrayBuffer's backing store off the garbage-collected heap, at a fixed address), keep a
 * reference for as long as the kernel may use the address, and never transfer or resize it.
 * Small typed arrays made with `new Uint8Array(n)` may live on the moving heap: don't use those.
 */
export function addressOf(view: ArrayBufferView): bigint {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  return BigInt(libc().addressOf(bytes, bytes, 0n));
}

export const EINVAL = 22;
export const EACCES = 13;
export const ENODEV = 19;
export const ETIMEDOUT = 110;
export const EMSGSIZE = 90;
