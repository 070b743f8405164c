// Shared helpers for the daemon integration tests (tests/server_test.ts, tests/client_test.ts):
// start our daemons the way a user would (`deno run <narrow permissions> main.ts ...`), an HTTP
// server with a deterministic 20 MiB body, curl/ping/nstat/tcpdump wrappers, leak checks, and a
// UDP fuzzer for the server's two ports.
//
// Run as a script inside a lab namespace it is one of those helper programs:
//   deno run --allow-net=0.0.0.0:PORT lab_util.ts http PORT
//   deno run --allow-net=SERVER,0.0.0.0 --allow-read=PLAN lab_util.ts fuzz PLAN.json
//   deno run --allow-net=0.0.0.0 lab_util.ts hold-udp PORT

import dgram from "node:dgram";
import type { Buffer } from "node:buffer";
import { kemLibraryPaths } from "../../ffi/kem_native.ts";
import { sodium, sodiumPath } from "../../ffi/sodium.ts";
import { nettle, nettlePath } from "../../ffi/nettle.ts";
import { commandFlags } from "../../lib/runtime/permissions.ts";
import { fromHex, hex } from "../../lib/core/bytes.ts";
import {
  COOKIE_PREFIX,
  HANDSHAKE_BYTES,
  MSG_EPHEMERAL_KEY_RESPONSE,
  MSG_HANDSHAKE_FAIL,
  MSG_INITIATION,
  MSG_STATIC_KEY_RESPONSE,
  MSG_TUNNEL,
  TAG_BYTES,
  TUNNEL_OVERHEAD,
} from "../../lib/core/constants.ts";
import { ephemeralKeyRequest, parseKeyResponse, staticKeyRequest } from "../../lib/core/keymsg.ts";
import { TREE_SHAPE } from "../../lib/core/keytree.ts";
import {
  type LabProcess,
  namespacePids,
  run,
  type RunResult,
  sleep,
  spawn,
  tail,
} from "../lab/netns.ts";
import { dig, type Zone } from "../lab/dnsmasq.ts";

export const PROJECT_DIR = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
export const MAIN_TS = `${PROJECT_DIR}/main.ts`;
const SELF = new URL(import.meta.url).pathname;
const DENO = Deno.execPath();
const PRIVSEP_USER = "pqconnect";

// ---- environment -------------------------------------------------------------------------------

/**
 * Why the lab cannot run in this test process, or null. The harness (tests/lab/) and these
 * helpers read /proc (process liveness, ids, mounts), which Deno refuses without --allow-all
 * whatever --allow-read says. A failure, not a skip: a CI run must not pass without the lab.
 */
export function labPermissionProblem(file: string): string | null {
  try {
    Deno.readTextFileSync("/proc/self/stat");
    return null;
  } catch (e) {
    return `this test needs --allow-all (it reads /proc, which Deno allows only then): ` +
      `deno test --allow-all ${file} (${(e as Error).message})`;
  }
}

/** The environment our deno processes get: enough to find Deno's module cache, nothing else. */
export function denoEnv(): Record<string, string> {
  const env: Record<string, string> = {
    HOME: Deno.env.get("HOME") ?? "/root",
    DENO_NO_UPDATE_CHECK: "1",
    NO_COLOR: "1",
  };
  const dir = Deno.env.get("DENO_DIR");
  if (dir) env.DENO_DIR = dir;
  return env;
}

/** Fetches every dependency in the root namespace: processes in a lab namespace have no route
 * to any registry. A no-op when everything is cached. */
export async function cacheDependencies(): Promise<void> {
  await run(null, [DENO, "cache", `--config=${PROJECT_DIR}/deno.json`, MAIN_TS, SELF], {
    env: denoEnv(),
    timeoutMs: 300_000,
  });
}

/** Both daemons drop to user `pqconnect`. CI machines may lack it: create it as a system user
 * without home or login shell (what a package's postinst would do). */
export async function ensurePrivsepUser(): Promise<void> {
  const r = await run(null, ["getent", "passwd", PRIVSEP_USER], { check: false });
  if (r.code === 0) return;
  console.log(`creating system user ${PRIVSEP_USER} (missing on this machine)`);
  await run(null, [
    "useradd",
    "--system",
    "--no-create-home",
    "--shell",
    "/usr/sbin/nologin",
    PRIVSEP_USER,
  ]);
}

/** Removes temporary directories an earlier, crashed run left in the temp dir (by prefix). */
export async function removeStaleTempDirs(prefixes: string[]): Promise<void> {
  const tmp = Deno.env.get("TMPDIR") ?? "/tmp";
  for await (const e of Deno.readDir(tmp)) {
    if (e.isDirectory && prefixes.some((p) => e.name.startsWith(p))) {
      await Deno.remove(`${tmp}/${e.name}`, { recursive: true }).catch(() => {});
    }
  }
}

// ---- permissions -------------------------------------------------------------------------------

/**
 * `pqconnect server` with the flags the launcher and the deno.json task give it (commandFlags in
 * lib/runtime/permissions.ts), scoped to `keyDir`: read on the key directory and the code root
 * (the crypto worker's modules), every optional library (libsodium, Nettle, the native KEMs) and
 * the uid check. A hand-written list here had left Nettle out, so under the harness the server
 * ran SHAKE256 in JavaScript while `./pqconnect server` uses Nettle.
 */
export function serverPermissions(keyDir: string): string[] {
  return [
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    ...commandFlags("server", { keyDir, runtimeDir: "", code: PROJECT_DIR }),
  ];
}

/**
 * `pqconnect client` (the root supervisor) with the flags the launcher and the deno.json task
 * give it (commandFlags in lib/runtime/permissions.ts), scoped to `runtimeDir`: the optional
 * libraries too, since its worker may load only those the supervisor could (workerArgv in
 * lib/client/supervisor.ts). With libc alone it ran the AEAD and SHAKE256 in JavaScript, unlike
 * `./pqconnect client`.
 */
export function clientPermissions(runtimeDir: string): string[] {
  return [
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    ...commandFlags("client", { keyDir: "", runtimeDir, code: PROJECT_DIR }),
  ];
}

/** `pqconnect status`: Deno wants net ("unix:" + path), read and write on the control socket to
 * connect to it; nothing else. */
export function statusPermissions(runtimeDir: string): string[] {
  const sock = `${runtimeDir}/client.sock`;
  return [
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    `--allow-net=unix:${sock}`,
    `--allow-read=${sock}`,
    `--allow-write=${sock}`,
  ];
}

export function pqconnectArgv(permissions: string[], args: string[]): string[] {
  return [DENO, "run", ...permissions, MAIN_TS, ...args];
}

// ---- keys and announcement ----------------------------------------------------------------------

/**
 * `pqconnect keygen` into `dir` (read and write there, and the native KEM libraries as the
 * keygen task allows); returns the pq1 label.
 */
export async function keygen(dir: string): Promise<string> {
  const r = await run(
    null,
    pqconnectArgv([
      "--no-prompt",
      `--config=${PROJECT_DIR}/deno.json`,
      `--allow-read=${dir}`,
      `--allow-write=${dir}`,
      `--allow-ffi=${kemLibraryPaths().join(",")}`,
    ], ["keygen", "--keydir", dir]),
    { env: denoEnv(), timeoutMs: 120_000 },
  );
  const label = r.stdout.match(/\bpq1[a-z0-9]{52}\b/)?.[0];
  if (!label) throw new Error(`keygen printed no pq1 label:\n${r.stdout}${r.stderr}`);
  return label;
}

/** Turns `pqconnect announce` output (zone-file lines; it only reads the key directory) into
 * dnsmasq records. */
export async function announceZone(
  keyDir: string,
  name: string,
  ip: string,
  ports: { crypto: number; key: number },
): Promise<{ zone: Zone; records: string[]; pq1Name: string }> {
  const r = await run(
    null,
    pqconnectArgv(
      ["--no-prompt", `--config=${PROJECT_DIR}/deno.json`, `--allow-read=${keyDir}`],
      [
        "announce",
        "--keydir",
        keyDir,
        "--name",
        name,
        "--ip",
        ip,
        "--port",
        String(ports.crypto),
        "--keyport",
        String(ports.key),
      ],
    ),
    { env: denoEnv() },
  );
  const records = r.stdout.split("\n").filter((l) => l.trim() && !l.startsWith(";"));
  const zone: Zone = { domain: name.split(".").slice(1).join("."), hosts: [], cnames: [] };
  const strip = (n: string) => n.replace(/\.$/, "");
  let pq1Name = "";
  for (const line of records) {
    const f = line.trim().split(/\s+/);
    // owner [ttl] IN type data
    const at = f.indexOf("IN");
    if (at < 1 || f.length < at + 3) throw new Error(`unexpected announce line: ${line}`);
    const [type, data] = [f[at + 1], f[at + 2]];
    if (type === "CNAME") zone.cnames!.push({ alias: strip(f[0]), target: strip(data) });
    else if (type === "A") {
      zone.hosts!.push({ name: strip(f[0]), addr: data });
      pq1Name = strip(f[0]);
    } else throw new Error(`unexpected record type in announce output: ${line}`);
  }
  if (!pq1Name.startsWith("pq1") || zone.cnames!.length !== 1) {
    throw new Error(`announce output lacks the pq1 A record or the CNAME:\n${r.stdout}`);
  }
  return { zone, records, pq1Name };
}

// ---- our daemons ------------------------------------------------------------------------------

export interface OurServerOptions {
  keyDir: string;
  port: number;
  keyPort: number;
  hostIp: string;
  extra?: string[];
}

export function ourServerArgv(o: OurServerOptions): string[] {
  return pqconnectArgv(serverPermissions(o.keyDir), [
    "server",
    "-v",
    "--keydir",
    o.keyDir,
    "--port",
    String(o.port),
    "--keyport",
    String(o.keyPort),
    "--host-ip",
    o.hostIp,
    ...(o.extra ?? []),
  ]);
}

/**
 * Starts `pqconnect server` in `ns` and waits until it serves (privileges already dropped). Fails
 * when its log says it fell back to JavaScript for a library this machine has (nativeFallbacks).
 */
export async function startOurServer(ns: string, o: OurServerOptions): Promise<LabProcess> {
  const p = spawn(ns, ourServerArgv(o), { name: `pqconnect server@${ns}`, env: denoEnv() });
  try {
    await p.waitFor(/serving pq1\S+ on UDP/, 60_000);
    requireNativeCode("server", p);
  } catch (e) {
    await p.stop("SIGTERM", 5000);
    throw e;
  }
  return p;
}

export interface OurClient {
  process: LabProcess;
  workerPid: number;
}

/**
 * What a started daemon's log says it does in JavaScript although this machine has the native
 * library (loadable here, in the --allow-all test process): the server, and the client's worker,
 * name their AEAD and SHAKE256 backends before they say they are ready. Empty when they use all
 * of them.
 */
export function nativeFallbacks(output: string): string[] {
  const line = output.match(/AEAD backend: (\w+), SHAKE256: (\w+)/);
  if (!line) return ["its log names no AEAD backend"];
  const [, aead, shake] = line;
  const fallbacks: string[] = [];
  if (aead !== "libsodium" && sodium() !== null) {
    fallbacks.push(`AEAD backend: ${aead}, but ${sodiumPath()} loads`);
  }
  if (shake !== "nettle" && nettle() !== null) {
    fallbacks.push(`SHAKE256: ${shake}, but ${nettlePath()} loads`);
  }
  return fallbacks;
}

/** Throws when `nativeFallbacks` finds any in `process`'s log so far. */
function requireNativeCode(daemon: string, process: LabProcess): void {
  const fallbacks = nativeFallbacks(process.output());
  if (fallbacks.length > 0) {
    throw new Error(
      `the ${daemon} went without native code this machine has: ${fallbacks.join("; ")}\n` +
        process.output(),
    );
  }
}

/**
 * Starts `pqconnect client` in `ns`; resolves once its DNS queue rule is in place. Fails when its
 * log says it fell back to JavaScript for a library this machine has (nativeFallbacks).
 */
export async function startOurClient(
  ns: string,
  runtimeDir: string,
  extra: string[] = [],
): Promise<OurClient> {
  const argv = pqconnectArgv(clientPermissions(runtimeDir), [
    "client",
    "-v",
    "--runtime-dir",
    runtimeDir,
    ...extra,
  ]);
  const p = spawn(ns, argv, { name: `pqconnect client@${ns}`, env: denoEnv() });
  try {
    const line = await p.waitFor(
      /DNS answers go through queue \d+ \(\w+\); worker pid \d+/,
      60_000,
    );
    requireNativeCode("client", p);
    return { process: p, workerPid: Number(line.match(/worker pid (\d+)/)![1]) };
  } catch (e) {
    await p.stop("SIGTERM", 5000);
    throw e;
  }
}

// ---- HTTP server with a deterministic body ------------------------------------------------------

export const BLOB_BYTES = 20 * 1024 * 1024;

/** `size` pseudo-random bytes (xorshift32, fixed seed): the same on both ends of a transfer. */
export function deterministicBytes(size: number): Uint8Array<ArrayBuffer> {
  const words = new Uint32Array(Math.ceil(size / 4));
  let x = 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return new Uint8Array(words.buffer, 0, size);
}

export async function sha256Hex(data: Uint8Array): Promise<string> {
  const copy = new Uint8Array(data.length);
  copy.set(data);
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", copy)));
}

export const HELLO = "hello from the pqconnect-ts lab\n";

/** An HTTP server on 0.0.0.0:`port` in `ns`: `/blob` is the 20 MiB body, anything else HELLO.
 * Logs `REQ <peer> <path>` per request. */
export async function startHttpServer(ns: string, port: number): Promise<LabProcess> {
  const p = spawn(ns, [
    DENO,
    "run",
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    `--allow-net=0.0.0.0:${port}`,
    SELF,
    "http",
    String(port),
  ], { name: `http@${ns}`, env: denoEnv() });
  try {
    await p.waitFor("LISTENING", 30_000);
  } catch (e) {
    await p.stop();
    throw e;
  }
  return p;
}

function serveHttp(port: number): void {
  const blob = deterministicBytes(BLOB_BYTES);
  Deno.serve({
    hostname: "0.0.0.0",
    port,
    onListen: () => console.log("LISTENING"),
  }, (req, info) => {
    const path = new URL(req.url).pathname;
    console.log(`REQ ${info.remoteAddr.hostname} ${path}`);
    if (path === "/blob") {
      return new Response(blob, { headers: { "content-type": "application/octet-stream" } });
    }
    return new Response(HELLO);
  });
}

// ---- client-side tools ------------------------------------------------------------------------

export interface CurlResult {
  exit: number;
  http: string;
  seconds: number;
  remoteIp: string;
  bytes: number;
  body: string;
  stderr: string;
}

/** curl `url` from `ns`. With `outFile` the body goes there instead of into `body`. */
/**
 * Resolves `name` through the client in `ns` (the tunnel address it hands out) and waits until
 * the tunnel carries a ping to it.
 */
export async function tunnelTarget(ns: string, name: string): Promise<string> {
  const answer = await dig(ns, name);
  const target = answer.answers.find((a) => a.type === "A")?.data;
  if (!target) throw new Error(`no A record through the client:\n${answer.raw}`);
  for (let i = 0; i < 100; i++) {
    const r = await run(ns, ["ping", "-n", "-c", "1", "-W", "1", target], { check: false });
    if (r.code === 0) return target;
  }
  throw new Error("the tunnel never carried a ping");
}

/** TCP throughput of `seconds` of iperf3 from `ns` to `target` (a server already listening). */
export async function iperfMbit(ns: string, target: string, seconds: number): Promise<number> {
  const r = await run(ns, ["iperf3", "-c", target, "-t", String(seconds), "-J"], {
    check: false,
    timeoutMs: (seconds + 30) * 1000,
  });
  const bps = JSON.parse(r.stdout || "{}").end?.sum_received?.bits_per_second;
  if (typeof bps !== "number") throw new Error(`iperf3 failed: ${r.stdout}${r.stderr}`);
  return bps / 1e6;
}

/** The resident set of process `pid`, KiB. */
export function rssKiB(pid: number): number {
  const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) : 0;
}

/**
 * Whether a garbage-collected server's memory stayed flat under a load it met once before
 * (`warm`: resident KiB samples over the warm-up rounds, `rss`: over the measured one). Either
 * the measured round added little, and clearly less than the same load added while warming up
 * (growth that followed the load would add as much again), or it levelled off by the round's
 * end (V8 settled later than the warm-up): its last 4 samples no more than 2 MiB above what
 * came before, and under 256 MiB.
 */
export function memoryLevelled(warm: number[], rss: number[]): boolean {
  const grewWarm = Math.max(...warm) - warm[0];
  const grew = Math.max(...rss) - rss[0];
  const small = grew <= 32 * 1024 && grew <= Math.max(8 * 1024, 0.75 * grewWarm);
  const lastRise = Math.max(...rss.slice(-4)) - Math.max(...rss.slice(0, -4));
  const levelled = lastRise <= 2 * 1024 && Math.max(...rss) <= 256 * 1024;
  return small || levelled;
}

export async function curl(
  ns: string,
  url: string,
  opts: { maxSec?: number; outFile?: string } = {},
): Promise<CurlResult> {
  const maxSec = opts.maxSec ?? 20;
  const marker = "\n@@CURL@@";
  const r = await run(ns, [
    "curl",
    "-sS",
    "--max-time",
    String(maxSec),
    "-o",
    opts.outFile ?? "-",
    "-w",
    `${marker} %{http_code} %{time_total} %{remote_ip} %{size_download}`,
    url,
  ], { check: false, timeoutMs: (maxSec + 10) * 1000 });
  const at = r.stdout.lastIndexOf(marker);
  const [http, secs, ip, size] = at < 0 ? [] : r.stdout.slice(at + marker.length).trim().split(" ");
  return {
    exit: r.code,
    http: http ?? "",
    seconds: Number(secs),
    remoteIp: ip ?? "",
    bytes: Number(size),
    body: at >= 0 ? r.stdout.slice(0, at) : r.stdout,
    stderr: r.stderr.trim(),
  };
}

export function describeCurl(c: CurlResult): string {
  return `curl exit ${c.exit}, HTTP ${c.http || "-"}, ${c.seconds} s, remote ${c.remoteIp || "-"}` +
    (c.stderr ? `: ${c.stderr}` : "");
}

export interface PingStats {
  sent: number;
  received: number;
  min: number;
  avg: number;
  max: number;
}

export async function ping(ns: string, addr: string, count = 20): Promise<PingStats> {
  const r = await run(
    ns,
    ["ping", "-n", "-q", "-c", String(count), "-i", "0.05", "-W", "2", addr],
    {
      check: false,
      timeoutMs: 30_000,
    },
  );
  const pk = r.stdout.match(/(\d+) packets transmitted, (\d+) received/);
  const rtt = r.stdout.match(/= ([\d.]+)\/([\d.]+)\/([\d.]+)\//);
  if (!pk || !rtt) throw new Error(`ping ${addr} from ${ns} failed:\n${r.stdout}${r.stderr}`);
  return {
    sent: Number(pk[1]),
    received: Number(pk[2]),
    min: Number(rtt[1]),
    avg: Number(rtt[2]),
    max: Number(rtt[3]),
  };
}

/** Absolute values of kernel SNMP counters in `ns` (nstat -a, history untouched). */
export async function netCounters(ns: string, names: string[]): Promise<Record<string, number>> {
  const r = await run(ns, ["nstat", "-asz", ...names]);
  const out: Record<string, number> = {};
  for (const n of names) out[n] = 0;
  for (const line of r.stdout.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 2 && f[0] in out) out[f[0]] = Number(f[1]);
  }
  return out;
}

/** tcpdump in `ns`, line-buffered, numeric; resolves once it captures. */
export async function startTcpdump(ns: string, args: string[]): Promise<LabProcess> {
  const p = spawn(ns, ["tcpdump", "-n", "-l", ...args], { name: `tcpdump@${ns}` });
  try {
    await p.waitFor(/listening on/, 10_000);
  } catch (e) {
    await p.stop();
    throw e;
  }
  return p;
}

/** UDP payloads from `tcpdump -x` output (IP packets in hex, one block per packet). */
export function udpPayloadsFromHexDump(text: string): Uint8Array[] {
  const packets: string[] = [];
  let cur: string | null = null;
  for (const line of text.split("\n")) {
    const m = line.match(/^\s+0x[0-9a-f]+:\s+([0-9a-f ]+)$/);
    if (m) {
      if (cur !== null) cur += m[1].replace(/\s+/g, "");
      continue;
    }
    if (cur) packets.push(cur);
    cur = /^\d\d:\d\d:\d\d\.\d+ IP /.test(line) ? "" : null;
  }
  if (cur) packets.push(cur);
  const out: Uint8Array[] = [];
  for (const h of packets) {
    const ip = fromHex(h);
    if (ip.length < 28 || ip[0] >> 4 !== 4 || ip[9] !== 17) continue;
    const ihl = (ip[0] & 0x0f) * 4;
    // Only whole, unfragmented datagrams.
    if ((((ip[6] & 0x3f) << 8) | ip[7]) !== 0) continue;
    out.push(ip.slice(ihl + 8, (ip[2] << 8) | ip[3]));
  }
  return out;
}

// ---- leak checks -------------------------------------------------------------------------------

export async function tunDevices(ns: string): Promise<string[]> {
  const r = await run(null, ["ip", "-n", ns, "-o", "link", "show", "type", "tun"]);
  return r.stdout.split("\n").filter((l) => l.trim()).map((l) => l.split(":")[1].trim());
}

export function cmdline(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0").join(" ").trim();
  } catch {
    return "";
  }
}

/** Processes left in `ns` other than `allowed`, with their command lines. */
export async function strayProcesses(ns: string, allowed: number[] = []): Promise<string[]> {
  return (await namespacePids(ns)).filter((p) => !allowed.includes(p)).map((p) =>
    `${p}: ${cmdline(p)}`
  );
}

export interface ProcIds {
  uid: number[];
  gid: number[];
  groups: number[];
  noNewPrivs: number;
  capEff: string;
}

/** Real, effective, saved and filesystem IDs and more from /proc/<pid>/status. */
export function procIds(pid: number): ProcIds {
  const s = Deno.readTextFileSync(`/proc/${pid}/status`);
  const field = (name: string) => s.match(new RegExp(`^${name}:\\s*(.*)$`, "m"))?.[1] ?? "";
  const nums = (v: string) => v.trim().split(/\s+/).filter((x) => x).map(Number);
  return {
    uid: nums(field("Uid")),
    gid: nums(field("Gid")),
    groups: nums(field("Groups")),
    noNewPrivs: Number(field("NoNewPrivs")),
    capEff: field("CapEff").trim(),
  };
}

/** Drop counters a daemon reported (`dropped: reason +n (total in all), ...`), by reason. */
export function dropTotals(log: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of log.matchAll(/([a-z0-9-]+) \+\d+ \((\d+) in all\)/g)) {
    out[m[1]] = Math.max(out[m[1]] ?? 0, Number(m[2]));
  }
  return out;
}

// ---- teardown -----------------------------------------------------------------------------------

/** Runs every cleanup step even if some fail; the test's own failure is reported first. */
export class Teardown {
  readonly errors: unknown[] = [];

  async attempt(what: string, step: () => unknown): Promise<void> {
    try {
      await step();
    } catch (e) {
      this.errors.push(new Error(`${what}: ${(e as Error).message ?? e}`, { cause: e }));
    }
  }

  finish(failure: unknown): void {
    if (failure) {
      for (const e of this.errors) console.error("cleanup:", (e as Error).message);
      throw failure;
    }
    if (this.errors.length) throw this.errors[0];
  }
}

export function ms(seconds: number): string {
  return `${(seconds * 1000).toFixed(1)} ms`;
}

export function logs(parts: Record<string, string | undefined>, lines = 40): string {
  return Object.entries(parts).map(([k, v]) => `--- ${k} ---\n${tail(v ?? "", lines)}`).join("\n");
}

// ---- the fuzzer (runs inside the client namespace) ---------------------------------------------

export interface FuzzPlan {
  host: string;
  keyPort: number;
  cryptoPort: number;
  /** Static key requests and the exact responses they must get (hex). */
  probes: { label: string; request: string; response: string }[];
  /** A captured handshake initiation and tunnel packets of a live client (hex). */
  handshake: string;
  tunnel: string[];
  seed: number;
}

export interface FuzzReport {
  sent: number;
  sendErrors: number;
  byCategory: Record<string, number>;
  /** Answers from the key port per category. */
  keyAnswers: Record<string, number>;
  /** Key-port answers longer than the datagram they answered (must stay empty). */
  amplified: { category: string; request: number; response: number }[];
  /** Key-port answers to valid requests whose length differs from the request's. */
  wrongLength: { category: string; request: number; response: number }[];
  /** Datagrams the crypto port sent back to the fuzzer (it has no tunnel: must be 0). */
  cryptoAnswers: number;
  probesBefore: string[];
  probesAfter: string[];
  ephemeralAfter: string;
}

class Rng {
  constructor(private s: number) {}
  next(): number {
    this.s ^= this.s << 13;
    this.s ^= this.s >>> 17;
    this.s ^= this.s << 5;
    return (this.s >>> 0) / 0x100000000;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.int(0, 255);
    return b;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(0, xs.length - 1)];
  }
}

async function udpSocket(onMessage: (msg: Buffer) => void): Promise<dgram.Socket> {
  const s = dgram.createSocket("udp4");
  s.on("message", (msg) => onMessage(msg));
  s.on("error", () => {});
  await new Promise<void>((resolve) => s.bind(0, "0.0.0.0", resolve));
  return s;
}

function send(s: dgram.Socket, data: Uint8Array, port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => s.send(data, port, host, (err) => resolve(!err)));
}

/** Sends `request` from a fresh socket and returns the first answer (or null after retries). */
async function ask(
  host: string,
  port: number,
  request: Uint8Array,
  tries = 3,
): Promise<Uint8Array | null> {
  let answer: Uint8Array | null = null;
  const s = await udpSocket((m) => answer ??= new Uint8Array(m));
  try {
    for (let i = 0; i < tries && answer === null; i++) {
      await send(s, request, port, host);
      for (let t = 0; t < 50 && answer === null; t++) await sleep(10);
    }
    return answer;
  } finally {
    s.close();
  }
}

async function runProbes(plan: FuzzPlan): Promise<string[]> {
  const out: string[] = [];
  for (const p of plan.probes) {
    const got = await ask(plan.host, plan.keyPort, fromHex(p.request));
    if (got === null) out.push(`${p.label}: no answer`);
    else if (hex(got) !== p.response) {
      out.push(`${p.label}: wrong answer (${got.length} bytes, expected ${p.response.length / 2})`);
    } else out.push(`${p.label}: ok`);
  }
  return out;
}

async function fuzz(plan: FuzzPlan): Promise<FuzzReport> {
  const rng = new Rng(plan.seed >>> 0 || 1);
  const report: FuzzReport = {
    sent: 0,
    sendErrors: 0,
    byCategory: {},
    keyAnswers: {},
    amplified: [],
    wrongLength: [],
    cryptoAnswers: 0,
    probesBefore: [],
    probesAfter: [],
    ephemeralAfter: "",
  };
  report.probesBefore = await runProbes(plan);

  // Key port: one socket per (category, datagram length), so every answer can be compared with
  // the length of the request it answers.
  const keySockets = new Map<string, dgram.Socket>();
  const keySocket = async (category: string, len: number, valid: boolean) => {
    const k = `${category}/${len}`;
    let s = keySockets.get(k);
    if (!s) {
      s = await udpSocket((m) => {
        report.keyAnswers[category] = (report.keyAnswers[category] ?? 0) + 1;
        if (m.length > len) report.amplified.push({ category, request: len, response: m.length });
        else if (valid && m.length !== len) {
          report.wrongLength.push({ category, request: len, response: m.length });
        }
      });
      keySockets.set(k, s);
    }
    return s;
  };
  const cryptoSock = await udpSocket(() => report.cryptoAnswers++);
  let sinceBreath = 0;
  const emit = async (s: dgram.Socket, port: number, category: string, data: Uint8Array) => {
    report.byCategory[category] = (report.byCategory[category] ?? 0) + 1;
    report.sent++;
    if (!(await send(s, data, port, plan.host))) report.sendErrors++;
    // Small pauses so the flood is not just lost in socket buffers.
    if (++sinceBreath >= 64) {
      sinceBreath = 0;
      await sleep(3);
    }
  };
  const toKey = async (category: string, data: Uint8Array, valid = false) =>
    await emit(await keySocket(category, data.length, valid), plan.keyPort, category, data);
  const toCrypto = (category: string, data: Uint8Array) =>
    emit(cryptoSock, plan.cryptoPort, category, data);

  const LENGTHS = [
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    9,
    16,
    31,
    32,
    33,
    63,
    64,
    100,
    183,
    184,
    185,
    200,
    837,
    838,
    839,
    1163,
    1164,
    1165,
    1200,
    1205,
    1206,
    1400,
    1472,
    1500,
    2047,
    2048,
    2049,
  ] as const;
  const randomNode = () => {
    const depth = rng.int(0, 3);
    return { depth, pos: rng.int(0, TREE_SHAPE[depth] - 1) };
  };
  const validStatic = () => {
    const n = randomNode();
    return staticKeyRequest(n.depth, n.pos);
  };
  const withU16 = (msg: Uint8Array, at: number, v: number) => {
    const c = msg.slice();
    c[at] = (v >> 8) & 0xff;
    c[at + 1] = v & 0xff;
    return c;
  };

  // ---- key port ----
  for (let i = 0; i < 400; i++) await toKey("key-random", rng.bytes(rng.pick(LENGTHS)));
  for (let i = 0; i < 200; i++) {
    const v = validStatic();
    await toKey("key-truncated-static", v.subarray(0, rng.int(0, v.length - 1)));
  }
  const eph = ephemeralKeyRequest();
  for (let i = 0; i < 50; i++) {
    await toKey("key-truncated-ephemeral", eph.subarray(0, rng.int(0, eph.length - 1)));
  }
  for (let i = 0; i < 100; i++) {
    const v = rng.int(0, 4) === 0 ? eph : validStatic();
    const c = new Uint8Array(v.length + rng.int(1, 64));
    c.set(v);
    c.set(rng.bytes(c.length - v.length), v.length);
    await toKey("key-oversized", c);
  }
  for (const size of [4000, 8000, 30000, 60000, 65000]) {
    for (let i = 0; i < 4; i++) {
      const c = new Uint8Array(size);
      c.set(i % 2 ? eph : validStatic()); // a valid request followed by zeros, or random
      if (i >= 2) c.set(rng.bytes(size));
      await toKey("key-oversized", c);
    }
  }
  for (let i = 0; i < 150; i++) {
    const v = validStatic();
    let c: Uint8Array;
    switch (i % 10) {
      case 0: // depth field claims 2 bytes
        c = withU16(v, 2, 2);
        break;
      case 1: // position field claims 1 byte
        c = withU16(v, 5, 1);
        break;
      case 2: // padding length one short of the datagram
        c = withU16(v, 9, ((v[9] << 8) | v[10]) - 1);
        break;
      case 3: // padding length past the end
        c = withU16(v, 9, ((v[9] << 8) | v[10]) + 1);
        break;
      case 4: // zero-length field
        c = withU16(v, 2, 0);
        break;
      case 5: { // depth 4 does not exist
        c = v.slice();
        c[4] = 4;
        break;
      }
      case 6: // position past the last node of depth 3 (little-endian u16)
        c = staticKeyRequest(3, 0);
        c[7] = TREE_SHAPE[3] & 0xff;
        c[8] = TREE_SHAPE[3] >> 8;
        break;
      case 7: { // padding one byte short (a valid-looking but wrongly sized request)
        const n = randomNode();
        const good = staticKeyRequest(n.depth, n.pos);
        c = withU16(good.subarray(0, good.length - 1), 9, ((good[9] << 8) | good[10]) - 1);
        break;
      }
      case 8: { // a fourth field
        c = new Uint8Array(v.length + 3);
        c.set(v);
        c.set([0, 1, 0x42], v.length);
        break;
      }
      default: // 0xffff length
        c = withU16(v, 9, 0xffff);
    }
    await toKey("key-wrong-lengths", c);
  }
  for (let i = 0; i < 50; i++) {
    const v = validStatic();
    const t = rng.pick([
      MSG_STATIC_KEY_RESPONSE,
      MSG_EPHEMERAL_KEY_RESPONSE,
      MSG_INITIATION,
      MSG_TUNNEL,
      0xf400,
      0x0000,
    ]);
    await toKey("key-wrong-type", withU16(v, 0, t));
  }
  for (let i = 0; i < 100; i++) await toKey("key-valid", validStatic(), true);
  for (let i = 0; i < 10; i++) await toKey("key-valid", eph, true);

  // ---- crypto port ----
  const handshake = fromHex(plan.handshake);
  const tunnel = plan.tunnel.map(fromHex);
  for (let i = 0; i < 500; i++) await toCrypto("crypto-random", rng.bytes(rng.pick(LENGTHS)));
  for (let i = 0; i < 50; i++) {
    const len = rng.pick([2, 3, 100, 1000, HANDSHAKE_BYTES - 1, HANDSHAKE_BYTES + 1, 1400]);
    const c = rng.bytes(len);
    c[0] = MSG_INITIATION >> 8;
    c[1] = MSG_INITIATION & 0xff;
    await toCrypto("crypto-initiation-wrong-length", c);
  }
  for (let i = 0; i < 40; i++) {
    const c = rng.bytes(HANDSHAKE_BYTES);
    c[0] = MSG_INITIATION >> 8;
    c[1] = MSG_INITIATION & 0xff;
    await toCrypto("crypto-initiation-garbage", c);
  }
  for (let i = 0; i < 20; i++) await toCrypto("crypto-replayed-handshake", handshake);
  for (let i = 0; i < 100; i++) {
    const c = rng.pick(tunnel).slice();
    c.set(rng.bytes(TAG_BYTES), c.length - TAG_BYTES);
    await toCrypto("crypto-tunnel-garbage-tag", c);
  }
  for (let round = 0; round < 3; round++) {
    for (const t of tunnel) await toCrypto("crypto-tunnel-replay", t);
  }
  for (let i = 0; i < 50; i++) {
    const c = rng.pick(tunnel).slice();
    const at = rng.int(2, TUNNEL_OVERHEAD - TAG_BYTES - 1); // tid, epoch or counter
    c[at] ^= 1 << rng.int(0, 7);
    await toCrypto("crypto-tunnel-header-bitflip", c);
  }
  for (let i = 0; i < 100; i++) {
    const c = rng.bytes(rng.int(TUNNEL_OVERHEAD, 1400));
    c[0] = MSG_TUNNEL >> 8;
    c[1] = MSG_TUNNEL & 0xff;
    await toCrypto("crypto-tunnel-random-tid", c);
  }
  for (let i = 0; i < 50; i++) {
    const c = rng.bytes(rng.int(2, TUNNEL_OVERHEAD - 1));
    c[0] = MSG_TUNNEL >> 8;
    c[1] = MSG_TUNNEL & 0xff;
    await toCrypto("crypto-tunnel-short", c);
  }
  for (let i = 0; i < 50; i++) {
    const c = rng.bytes(rng.int(COOKIE_PREFIX.length, 400));
    c.set(COOKIE_PREFIX);
    await toCrypto("crypto-cookie-garbage", c);
  }
  for (let i = 0; i < 50; i++) {
    const v = i % 2 ? validStatic() : rng.bytes(rng.int(2, 300));
    if (i % 2 === 0) {
      v[0] = MSG_HANDSHAKE_FAIL >> 8;
      v[1] = MSG_HANDSHAKE_FAIL & 0xff;
    }
    await toCrypto("crypto-other-types", v);
  }
  for (let i = 0; i < 10; i++) await toCrypto("crypto-oversized", rng.bytes(60000));

  // Late answers, then the probes again: the key server must still answer exactly.
  await sleep(1500);
  for (const s of keySockets.values()) s.close();
  cryptoSock.close();
  report.probesAfter = await runProbes(plan);
  const e = await ask(plan.host, plan.keyPort, eph);
  const parsed = e ? parseKeyResponse(e) : null;
  report.ephemeralAfter = e === null
    ? "no answer"
    : parsed?.kind === "ephemeral" && e.length === eph.length
    ? "ok"
    : `malformed answer of ${e.length} bytes`;
  return report;
}

/** Binds UDP `port` on all addresses and keeps it, so a daemon's bind fails. */
async function holdUdp(port: number): Promise<void> {
  const s = dgram.createSocket("udp4");
  await new Promise<void>((resolve) => s.bind(port, "0.0.0.0", resolve));
  console.log("BOUND");
  await new Promise(() => {});
}

/** Runs the fuzzer in `ns` against the plan; returns its report. */
export async function runFuzzer(ns: string, plan: FuzzPlan, dir: string): Promise<FuzzReport> {
  const path = `${dir}/fuzz-plan.json`;
  await Deno.writeTextFile(path, JSON.stringify(plan));
  const r: RunResult = await run(ns, [
    DENO,
    "run",
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    `--allow-net=${plan.host},0.0.0.0`,
    `--allow-read=${path}`,
    SELF,
    "fuzz",
    path,
  ], { env: denoEnv(), timeoutMs: 120_000, check: false });
  const line = r.stdout.split("\n").find((l) => l.startsWith("FUZZ-REPORT "));
  if (!line) throw new Error(`the fuzzer failed (exit ${r.code}):\n${tail(r.stdout + r.stderr)}`);
  return JSON.parse(line.slice("FUZZ-REPORT ".length));
}

/** A process holding UDP `port` in `ns`. */
export async function holdUdpPort(ns: string, port: number): Promise<LabProcess> {
  const p = spawn(ns, [
    DENO,
    "run",
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    "--allow-net=0.0.0.0",
    SELF,
    "hold-udp",
    String(port),
  ], { name: `hold-udp@${ns}`, env: denoEnv() });
  try {
    await p.waitFor("BOUND", 30_000);
  } catch (e) {
    await p.stop();
    throw e;
  }
  return p;
}

if (import.meta.main) {
  const [mode, arg] = Deno.args;
  if (mode === "http") serveHttp(Number(arg));
  else if (mode === "fuzz") {
    const report = await fuzz(JSON.parse(await Deno.readTextFile(arg)));
    console.log(`FUZZ-REPORT ${JSON.stringify(report)}`);
    Deno.exit(0);
  } else if (mode === "hold-udp") await holdUdp(Number(arg));
  else {
    console.error("usage: lab_util.ts http PORT | fuzz PLAN.json | hold-udp PORT");
    Deno.exit(2);
  }
}

/** `${work}/keys`, made 0700 and holding the reference's fixture key set: a lab server's key
 * directory. */
export async function fixtureKeyDir(work: string): Promise<string> {
  const keyDir = `${work}/keys`;
  await Deno.mkdir(keyDir, { mode: 0o700 });
  await copyFixtureKeys(keyDir);
  return keyDir;
}

/** The reference's fixture key set, copied into `keyDir` with the modes a server expects. */
export async function copyFixtureKeys(keyDir: string): Promise<void> {
  const files: [string, number][] = [
    ["mceliece_pk", 0o644],
    ["mceliece_sk", 0o600],
    ["x25519_pk", 0o644],
    ["x25519_sk", 0o600],
    ["session_key", 0o600],
  ];
  for (const [f, mode] of files) {
    await Deno.copyFile(`${PROJECT_DIR}/tests/fixtures/${f}`, `${keyDir}/${f}`);
    await Deno.chmod(`${keyDir}/${f}`, mode);
  }
}
