// The reference PQConnect 1.2.2 (a Debian 13 root at /srv/pqref) as a peer in the lab: prepare
// the root, install server keys, run its server and client inside lab namespaces.

import {
  descendants,
  isAlive,
  type LabProcess,
  run,
  sleep,
  spawn,
  tail,
  terminatePids,
} from "./netns.ts";
import { dig } from "./dnsmasq.ts";

export const REF_ROOT = Deno.env.get("PQREF_ROOT") ?? "/srv/pqref";
const BUILD_SCRIPT = new URL("./build-reference-root.sh", import.meta.url).pathname;
const CLIENT_WRAPPER = new URL("./pqref_client.py", import.meta.url).pathname;
/** Where the wrapper lands inside the root. */
const WRAPPER_IN_ROOT = "/usr/local/lib/pqconnect-ts/pqref_client.py";
/** Mounts this harness made, so a later run (after a crash) unmounts them and nothing else. */
const MOUNT_STATE = "/run/pqconnect-ts-lab/pqref-mounts.json";
const KEY_FILES = ["mceliece_pk", "mceliece_sk", "x25519_pk", "x25519_sk", "session_key"];
const SECRET_FILES = new Set(["mceliece_sk", "x25519_sk", "session_key"]);
const REF_ENV = { PYTHONUNBUFFERED: "1", HOME: "/root" };

// ---- mounts ----------------------------------------------------------------------------------

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points of this process's mount namespace (field 5 of mountinfo). */
function mountPoints(): string[] {
  return Deno.readTextFileSync("/proc/self/mountinfo").split("\n").filter((l) => l)
    .map((l) => unescapeMount(l.split(" ")[4]));
}

function isMountPoint(path: string): boolean {
  return mountPoints().includes(path);
}

function readMountState(): string[] {
  try {
    const v = JSON.parse(Deno.readTextFileSync(MOUNT_STATE));
    return Array.isArray(v) ? v.filter((x) => typeof x === "string") : [];
  } catch {
    return [];
  }
}

function writeMountState(mounts: string[]): void {
  Deno.mkdirSync(MOUNT_STATE.slice(0, MOUNT_STATE.lastIndexOf("/")), { recursive: true });
  Deno.writeTextFileSync(MOUNT_STATE, JSON.stringify([...new Set(mounts)]));
}

const MOUNTS: { target: string; argv: (t: string) => string[][] }[] = [
  {
    target: "dev",
    // /dev/net/tun and /dev/shm (multiprocessing) are needed. rslave right after the rbind so
    // nothing done under the root can ever propagate back to the host's /dev.
    argv: (t) => [["mount", "--rbind", "/dev", t], ["mount", "--make-rslave", t]],
  },
  { target: "proc", argv: (t) => [["mount", "-t", "proc", "proc", t]] },
  { target: "sys", argv: (t) => [["mount", "-t", "sysfs", "sys", t]] },
];

const LOCK_FILE = "/run/pqconnect-ts-lab/pqref.lock";
let lockFile: Promise<Deno.FsFile> | null = null;
let lockUsers = 0;

async function acquireLock(): Promise<Deno.FsFile> {
  await Deno.mkdir(LOCK_FILE.slice(0, LOCK_FILE.lastIndexOf("/")), { recursive: true });
  const f = await Deno.open(LOCK_FILE, { create: true, write: true });
  const note = setTimeout(
    () => console.log(`waiting for another test process to release ${REF_ROOT} (${LOCK_FILE})`),
    3000,
  );
  try {
    await f.lock(true);
    return f;
  } catch (e) {
    f.close();
    throw e;
  } finally {
    clearTimeout(note);
  }
}

/** One test process at a time owns the reference root: its mounts, key directory and
 * resolv.conf are global. An flock, so a crashed owner releases it automatically. Callers in
 * the same process share it (counted). */
async function lockReferenceRoot(): Promise<void> {
  lockUsers++;
  lockFile ??= acquireLock();
  try {
    await lockFile;
  } catch (e) {
    lockUsers--;
    lockFile = null;
    throw e;
  }
}

function requireLock(what: string): void {
  if (lockUsers === 0) throw new Error(`${what}: call prepareReferenceRoot() first`);
}

async function unlockReferenceRoot(): Promise<void> {
  if (lockUsers === 0 || --lockUsers > 0) return;
  const f = lockFile;
  lockFile = null;
  // Closing the descriptor drops the flock.
  (await f)?.close();
}

/** Builds the reference root if missing (build-reference-root.sh, several minutes the first
 * time), takes the reference root lock (waiting for other test processes) and mounts /dev,
 * /proc and /sys into it. Idempotent; pair every call with releaseReferenceRoot. */
export async function prepareReferenceRoot(): Promise<void> {
  await lockReferenceRoot();
  try {
    await mountReferenceRoot();
  } catch (e) {
    await unlockReferenceRoot();
    throw e;
  }
}

async function mountReferenceRoot(): Promise<void> {
  try {
    await Deno.stat(`${REF_ROOT}/.pqconnect-ts-complete`);
  } catch {
    await run(null, ["bash", BUILD_SCRIPT], {
      timeoutMs: 30 * 60_000,
      env: { PQREF_ROOT: REF_ROOT },
    });
  }
  const ours = readMountState();
  for (const m of MOUNTS) {
    const t = `${REF_ROOT}/${m.target}`;
    if (isMountPoint(t)) continue; // already there (ours from before, or someone else's)
    for (const argv of m.argv(t)) await run(null, argv);
    ours.push(t);
    writeMountState(ours);
  }
}

/** Once the last user in this process is done: puts back the root's own keys and resolv.conf,
 * unmounts what prepareReferenceRoot mounted (in this run or an earlier, crashed one) and drops
 * the lock. */
export async function releaseReferenceRoot(): Promise<void> {
  if (lockUsers > 1) {
    await unlockReferenceRoot();
    return;
  }
  try {
    // Keys and resolver go back before the lock is dropped: the next owner starts clean.
    await restoreReferenceKeys();
    await restoreReferenceResolver();
    await unmountReferenceRoot();
  } finally {
    await unlockReferenceRoot();
  }
}

async function unmountReferenceRoot(): Promise<void> {
  const ours = readMountState();
  const left: string[] = [];
  for (const t of [...ours].reverse()) {
    if (!isMountPoint(t)) continue;
    if (!t.startsWith(`${REF_ROOT}/`)) {
      left.push(t);
      continue;
    }
    // Re-assert slave propagation before the recursive unmount: should anything have made the
    // tree shared, unmounting it would otherwise reach the host's own /dev submounts.
    if (t.endsWith("/dev")) await run(null, ["mount", "--make-rslave", t]);
    const r = await run(null, ["umount", "-R", t], { check: false });
    if (r.code !== 0) {
      // Busy (a straggler still has it open): detach lazily rather than leave it mounted.
      await run(null, ["umount", "-R", "-l", t], { check: false });
    }
    if (isMountPoint(t)) left.push(t);
  }
  writeMountState(left);
  if (left.length) throw new Error(`could not unmount ${left.join(", ")}`);
}

/** Mount points below the reference root, for leak checks. */
export function referenceMounts(): string[] {
  return mountPoints().filter((p) => p.startsWith(`${REF_ROOT}/`));
}

// ---- files inside the root -------------------------------------------------------------------

const KEY_DIR = () => `${REF_ROOT}/etc/pqconnect/keys`;
const KEY_BACKUP = () => `${REF_ROOT}/etc/pqconnect/keys.pqts-orig`;

/** Copies a server key directory (the five raw key files) into the root's
 * /etc/pqconnect/keys. The keys the package generated are kept aside once, for
 * restoreReferenceKeys. */
export async function installServerKeys(srcDir: string): Promise<void> {
  requireLock("installServerKeys");
  const dir = KEY_DIR();
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    await Deno.stat(KEY_BACKUP());
  } catch {
    await Deno.mkdir(KEY_BACKUP(), { mode: 0o700 });
    for (const f of KEY_FILES) {
      await Deno.copyFile(`${dir}/${f}`, `${KEY_BACKUP()}/${f}`).catch(() => {});
    }
  }
  for (const f of KEY_FILES) {
    await Deno.copyFile(`${srcDir.replace(/\/$/, "")}/${f}`, `${dir}/${f}`);
    await Deno.chmod(`${dir}/${f}`, SECRET_FILES.has(f) ? 0o600 : 0o644);
  }
}

/** Puts back the keys that were in the root before installServerKeys (releaseReferenceRoot
 * does this too). */
export async function restoreReferenceKeys(): Promise<void> {
  try {
    await Deno.stat(KEY_BACKUP());
  } catch {
    return;
  }
  for (const f of KEY_FILES) {
    await Deno.copyFile(`${KEY_BACKUP()}/${f}`, `${KEY_DIR()}/${f}`).catch(() => {});
  }
  await Deno.remove(KEY_BACKUP(), { recursive: true });
}

const RESOLV = () => `${REF_ROOT}/etc/resolv.conf`;
const RESOLV_BACKUP = () => `${REF_ROOT}/etc/resolv.conf.pqts-orig`;

/** The reference client resolves TXT records with the root's own /etc/resolv.conf. */
async function setReferenceResolver(server: string): Promise<void> {
  try {
    await Deno.stat(RESOLV_BACKUP());
  } catch {
    await Deno.copyFile(RESOLV(), RESOLV_BACKUP());
  }
  await Deno.writeTextFile(RESOLV(), `nameserver ${server}\n`);
}

export async function restoreReferenceResolver(): Promise<void> {
  try {
    await Deno.copyFile(RESOLV_BACKUP(), RESOLV());
    await Deno.remove(RESOLV_BACKUP());
  } catch { /* nothing saved: nothing to restore */ }
}

/** The client runs its work as user `pqconnect`; the package creates it, check anyway. */
async function ensurePrivsepUser(): Promise<void> {
  const passwd = await Deno.readTextFile(`${REF_ROOT}/etc/passwd`);
  if (/^pqconnect:/m.test(passwd)) return;
  await run(null, [
    "chroot",
    REF_ROOT,
    "adduser",
    "--quiet",
    "--system",
    "--no-create-home",
    "--group",
    "--home",
    "/etc/pqconnect",
    "pqconnect",
  ]);
}

// ---- processes -------------------------------------------------------------------------------

/** A reference server or client. Its main process forks workers; stop() ends all of them. */
export class ReferenceProcess {
  constructor(readonly process: LabProcess, private readonly onStop: () => Promise<void>) {}

  get pid(): number {
    return this.process.pid;
  }

  log(): string {
    return this.process.output();
  }

  /** SIGTERM to the main process, then to any worker it left behind, SIGKILL as last resort. */
  async stop(graceMs = 6000): Promise<void> {
    try {
      const workers = descendants(this.pid);
      await this.process.stop("SIGTERM", graceMs, true);
      // The reference server has no SIGTERM handler: its main process dies and the forked
      // workers stay behind. The client shuts its workers down itself within ~1 s.
      const deadline = Date.now() + 2000;
      while (Date.now() < deadline && workers.some(isAlive)) await sleep(50);
      await terminatePids(workers.filter(isAlive), 3000);
    } finally {
      await this.process.releaseOutput();
      await this.onStop();
    }
  }
}

export interface ServerOptions {
  port?: number;
  keyPort?: number;
  /** -H: where decrypted traffic is delivered (the server namespace's own address). */
  hostIp?: string;
  /** -a: TUN address (default 10.42.0.1). */
  tunAddr?: string;
  /** -i: TUN name (default pqcserv0). */
  interfaceName?: string;
  /** How long to wait for the key pairs of the day to be generated (default 120 s). */
  readyTimeoutMs?: number;
  /** -vv instead of -v: also a line per tunnel packet received and sent. */
  veryVerbose?: boolean;
}

/** Starts `pqconnect-server -v` in `ns`; resolves once its key server hands out keys. */
export async function startReferenceServer(
  ns: string,
  opts: ServerOptions = {},
): Promise<ReferenceProcess> {
  requireLock("startReferenceServer");
  await ensurePrivsepUser();
  const args = [
    "chroot",
    REF_ROOT,
    "pqconnect-server",
    opts.veryVerbose ? "-vv" : "-v",
    "-p",
    String(opts.port ?? 42424),
    "-k",
    String(opts.keyPort ?? 42425),
  ];
  if (opts.hostIp) args.push("-H", opts.hostIp);
  if (opts.tunAddr) args.push("-a", opts.tunAddr);
  if (opts.interfaceName) args.push("-i", opts.interfaceName);
  const proc = spawn(ns, args, { name: `reference server@${ns}`, env: REF_ENV });
  const ref = new ReferenceProcess(proc, async () => {});
  try {
    // It pre-generates a day of ephemeral key pairs (2880 slots) before serving any.
    await proc.waitFor("Done generating ephemeral keypairs", opts.readyTimeoutMs ?? 120_000);
  } catch (e) {
    await ref.stop();
    throw e;
  }
  return ref;
}

export interface ClientOptions {
  /** The lab's DNS server, written into the root's /etc/resolv.conf while the client runs. */
  dnsServer: string;
  /** -p: UDP port (default 42423). */
  port?: number;
  /** -a: TUN address (default 10.43.0.1). */
  tunAddr?: string;
  interfaceName?: string;
  readyTimeoutMs?: number;
}

/** Starts the reference client (`pqconnect -v` through the iptables wrapper) in `ns` and waits
 * until DNS responses flow through its queue. */
export async function startReferenceClient(
  ns: string,
  opts: ClientOptions,
): Promise<ReferenceProcess> {
  requireLock("startReferenceClient");
  await ensurePrivsepUser();
  await Deno.mkdir(`${REF_ROOT}${WRAPPER_IN_ROOT.slice(0, WRAPPER_IN_ROOT.lastIndexOf("/"))}`, {
    recursive: true,
  });
  await Deno.copyFile(CLIENT_WRAPPER, `${REF_ROOT}${WRAPPER_IN_ROOT}`);
  // Stale pid files from a killed run make the client refuse to start if the pid got reused.
  for (const f of ["pqconnect.pid", "pqconnect-cli.pid"]) {
    await Deno.remove(`${REF_ROOT}/run/${f}`).catch(() => {});
  }
  await setReferenceResolver(opts.dnsServer);

  const args = ["chroot", REF_ROOT, "python3", WRAPPER_IN_ROOT, "-v"];
  if (opts.port) args.push("-p", String(opts.port));
  if (opts.tunAddr) args.push("-a", opts.tunAddr);
  if (opts.interfaceName) args.push("-i", opts.interfaceName);
  const proc = spawn(ns, args, { name: `reference client@${ns}`, env: REF_ENV });
  const ref = new ReferenceProcess(proc, restoreReferenceResolver);
  try {
    const timeout = opts.readyTimeoutMs ?? 30_000;
    await proc.waitFor("Listening on port", timeout);
    // The queue rule drops DNS responses until the proxy has bound the queue: wait for a
    // response to come through (REFUSED for a name outside the zone is fine).
    const deadline = Date.now() + timeout;
    for (;;) {
      const r = await dig(ns, "pqts-probe.invalid", "A", opts.dnsServer, 1);
      if (r.status !== "NORESPONSE") break;
      if (Date.now() > deadline) {
        throw new Error(`no DNS through the reference client's queue\n${tail(proc.output())}`);
      }
      await sleep(100);
    }
  } catch (e) {
    await ref.stop();
    throw e;
  }
  return ref;
}

/** Leftover netfilter state of the reference client in `ns` (for leak checks). */
export async function clientNetfilterLeftovers(ns: string): Promise<string[]> {
  const left: string[] = [];
  const ipt = await run(ns, ["iptables", "-S", "INPUT"], { check: false });
  for (const l of ipt.stdout.split("\n")) if (l.includes("NFQUEUE")) left.push(l);
  const nft = await run(ns, ["nft", "list", "tables"], { check: false });
  for (const l of nft.stdout.split("\n")) if (l.includes("pqconnect")) left.push(l);
  return left;
}
