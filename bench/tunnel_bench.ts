// Tunnel data-path benchmark, as root: `deno run -A bench/tunnel_bench.ts [options]`.
//
// Builds a two-namespace lab (pqts-perf-srv / pqts-perf-cli, joined by a veth pair), then in
// one run measures the plain veth link and the same link through a tunnel between our server
// and our client: iperf3 TCP throughput both ways, ping round trip, and the CPU the daemons
// use while the tunnel is busy and while it is idle. With --reference the reference server
// (PQConnect 1.2.2, our client in front of it) is measured too. Figures are printed as a table
// with ratios against the plain link of the same run.
//
// Options:
//   --seconds N     iperf3 duration per direction (default 5)
//   --idle N        idle CPU sampling window in seconds (default 10)
//   --mtu N         TUN MTU for our server and client (default: theirs, 1400)
//   --reference     also measure the reference server
//   --no-ours       skip our server (with --reference: the reference alone)
//   --json FILE     also write the figures as JSON
//   --keep-logs     print the daemons' last log lines even when all went well
//   --profile DIR   run our server with --cpu-prof, the profile lands in DIR

import {
  createLab,
  descendants,
  destroyLab,
  isAlive,
  type Lab,
  type LabProcess,
  run,
  sleep,
  spawn,
  tail,
} from "../tests/lab/netns.ts";
import { announcement, dig, mergeZones, startDnsmasq } from "../tests/lab/dnsmasq.ts";
import { ourServerArgv } from "./our_server.ts";

const PREFIX = "pqts-perf";
const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const RUNTIME_DIR = "/run/pqts-perf";
const NAME = "www.lab.test";

interface Options {
  seconds: number;
  idle: number;
  mtu: number | null;
  reference: boolean;
  ours: boolean;
  json: string | null;
  keepLogs: boolean;
  profile: string | null;
}

function parseArgs(args: string[]): Options {
  const o: Options = {
    seconds: 5,
    idle: 10,
    mtu: null,
    reference: false,
    ours: true,
    json: null,
    keepLogs: false,
    profile: null,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const value = () => {
      const v = args[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    const positive = (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${a} must be a positive integer`);
      return n;
    };
    if (a === "--seconds") o.seconds = positive(value());
    else if (a === "--idle") o.idle = positive(value());
    else if (a === "--mtu") o.mtu = positive(value());
    else if (a === "--reference") o.reference = true;
    else if (a === "--no-ours") o.ours = false;
    else if (a === "--json") o.json = value();
    else if (a === "--keep-logs") o.keepLogs = true;
    else if (a === "--profile") o.profile = value();
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

// ---- measurements ----------------------------------------------------------------------------

interface Figures {
  /** Mbit/s received, client → server and server → client. */
  up: number | null;
  down: number | null;
  /** Average and minimum ping round trip, ms. */
  rtt: number | null;
  rttMin: number | null;
  /** CPU of the server and client daemons, % of one core. */
  busyServerCpu?: number | null;
  busyClientCpu?: number | null;
  /** Whole machine during TCP up: % of all cores busy. */
  busyMachineCpu?: number | null;
  idleServerCpu?: number | null;
  idleClientCpu?: number | null;
  notes: string[];
}

const CLK_TCK = 100;

/** utime + stime of every thread of `pid`, in clock ticks; 0 once it is gone. */
function cpuTicks(pid: number): number {
  try {
    const s = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of the full line; the slice starts at field 3.
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

/** A daemon is its main process plus whatever it started (the client's worker). */
function treeTicks(pid: number): number {
  return [pid, ...descendants(pid)].reduce((sum, p) => sum + cpuTicks(p), 0);
}

/** Busy and total jiffies of all cores, from /proc/stat. */
function machineTicks(): { busy: number; total: number } {
  const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1, 9)
    .map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - f[3] - f[4], total }; // idle and iowait are not busy
}

/** Measures the CPU of process trees while `during` runs: % of one core each. */
async function cpuWhile(pids: number[], during: Promise<unknown>): Promise<number[]> {
  const t0 = performance.now();
  const before = pids.map(treeTicks);
  await during;
  const seconds = (performance.now() - t0) / 1000;
  return pids.map((p, i) => ((treeTicks(p) - before[i]) / CLK_TCK / seconds) * 100);
}

async function iperf(lab: Lab, target: string, seconds: number, reverse: boolean) {
  const args = ["iperf3", "-c", target, "-t", String(seconds), "-J", "--connect-timeout", "5000"];
  if (reverse) args.push("-R");
  const r = await run(lab.clientNs, args, { check: false, timeoutMs: (seconds + 30) * 1000 });
  try {
    const j = JSON.parse(r.stdout);
    if (j.error) return { mbps: null, error: String(j.error) };
    const bps = j.end?.sum_received?.bits_per_second;
    const retr = j.end?.sum_sent?.retransmits;
    return {
      mbps: typeof bps === "number" ? bps / 1e6 : null,
      error: typeof retr === "number" && retr > 0 ? `${retr} retransmits` : null,
    };
  } catch {
    return { mbps: null, error: `iperf3 exited ${r.code}: ${(r.stderr || r.stdout).trim()}` };
  }
}

async function ping(lab: Lab, target: string, count: number, interval: string) {
  const r = await run(
    lab.clientNs,
    ["ping", "-q", "-n", "-c", String(count), "-i", interval, "-W", "1", target],
    { check: false, timeoutMs: 60_000 },
  );
  const m = r.stdout.match(/= ([\d.]+)\/([\d.]+)\/([\d.]+)\/([\d.]+) ms/);
  const loss = r.stdout.match(/([\d.]+)% packet loss/)?.[1];
  return {
    avg: m ? Number(m[2]) : null,
    min: m ? Number(m[1]) : null,
    loss: loss === undefined ? null : Number(loss),
  };
}

/** Plain-link and through-tunnel figures share this: ping, then iperf3 both ways. */
async function measure(
  lab: Lab,
  target: string,
  opts: Options,
  daemons: { server: number; client: number } | null,
): Promise<Figures> {
  const notes: string[] = [];
  const p = await ping(lab, target, 50, "0.01");
  if (p.loss) notes.push(`ping loss ${p.loss}%`);
  const upRun = iperf(lab, target, opts.seconds, false);
  const m0 = machineTicks();
  const busy = await cpuWhile(daemons ? [daemons.server, daemons.client] : [], upRun);
  const m1 = machineTicks();
  const up = await upRun;
  if (up.error) notes.push(`up: ${up.error}`);
  const down = await iperf(lab, target, opts.seconds, true);
  if (down.error) notes.push(`down: ${down.error}`);
  return {
    up: up.mbps,
    down: down.mbps,
    rtt: p.avg,
    rttMin: p.min,
    busyServerCpu: busy[0] ?? null,
    busyClientCpu: busy[1] ?? null,
    busyMachineCpu: ((m1.busy - m0.busy) / (m1.total - m0.total)) * 100,
    notes,
  };
}

async function idleCpu(daemons: { server: number; client: number }, seconds: number) {
  await sleep(1000); // let the last test's packets drain
  const [server, client] = await cpuWhile(
    [daemons.server, daemons.client],
    sleep(seconds * 1000),
  );
  return { server, client };
}

// ---- daemons ---------------------------------------------------------------------------------

function mtuArgs(opts: Options): string[] {
  return opts.mtu === null ? [] : ["--mtu", String(opts.mtu)];
}

function startOurServer(lab: Lab, opts: Options): LabProcess {
  return spawn(lab.serverNs, ourServerArgv(lab.serverAddr, opts.profile, mtuArgs(opts)), {
    name: "our server",
  });
}

async function startOurClient(lab: Lab, opts: Options): Promise<LabProcess> {
  const client = spawn(lab.clientNs, [
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}/main.ts`,
    "client",
    "--runtime-dir",
    RUNTIME_DIR,
    ...mtuArgs(opts),
  ], { name: "our client" });
  await client.waitFor("DNS answers go through", 60_000);
  return client;
}

/** Resolves the announced name through the client (it answers with an internal address) and
 * waits until the tunnel carries a ping: the first one pays for the key download. */
async function tunnelTarget(lab: Lab): Promise<string> {
  const answer = await dig(lab.clientNs, NAME);
  const a = answer.answers.find((x) => x.type === "A");
  if (!a) throw new Error(`no A record for ${NAME} through the client:\n${answer.raw}`);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const r = await run(lab.clientNs, ["ping", "-n", "-c", "1", "-W", "2", a.data], {
      check: false,
    });
    if (r.code === 0) return a.data;
    await sleep(200);
  }
  throw new Error(`no ping through the tunnel to ${a.data} within 60 s`);
}

// ---- output ----------------------------------------------------------------------------------

function fmt(v: number | null | undefined, digits: number): string {
  return v === null || v === undefined ? "—" : v.toFixed(digits);
}

function ratio(v: number | null | undefined, base: number | null | undefined): string {
  if (v === null || v === undefined || !base) return "";
  const r = v / base;
  return ` (${r >= 10 ? r.toFixed(1) : r.toFixed(r >= 0.1 ? 2 : 4)}×)`;
}

function printTable(plain: Figures, columns: { name: string; f: Figures }[]): void {
  const rows: string[][] = [["", "plain veth", ...columns.map((c) => c.name)]];
  const add = (
    label: string,
    get: (f: Figures) => number | null | undefined,
    digits: number,
    withRatio: boolean,
    withPlain = true,
  ) => {
    const base = get(plain);
    rows.push([
      label,
      withPlain ? fmt(base, digits) : "",
      ...columns.map((c) => fmt(get(c.f), digits) + (withRatio ? ratio(get(c.f), base) : "")),
    ]);
  };
  add("TCP client→server, Mbit/s", (f) => f.up, 0, true);
  add("TCP server→client, Mbit/s", (f) => f.down, 0, true);
  add("ping avg RTT, ms", (f) => f.rtt, 3, true);
  add("ping min RTT, ms", (f) => f.rttMin, 3, true);
  rows.push([
    "added avg RTT, ms",
    "",
    ...columns.map((c) =>
      c.f.rtt !== null && plain.rtt !== null ? (c.f.rtt - plain.rtt).toFixed(3) : "—"
    ),
  ]);
  add("server CPU during TCP up, %", (f) => f.busyServerCpu, 1, false, false);
  add("client CPU during TCP up, %", (f) => f.busyClientCpu, 1, false, false);
  add("machine CPU during TCP up, % of all", (f) => f.busyMachineCpu, 0, false);
  add("server CPU idle, %", (f) => f.idleServerCpu, 2, false, false);
  add("client CPU idle, %", (f) => f.idleClientCpu, 2, false, false);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  console.log("\n" + line(rows[0]));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows.slice(1)) console.log(line(r));
  for (const c of [{ name: "plain veth", f: plain }, ...columns]) {
    for (const n of c.f.notes) console.log(`note (${c.name}): ${n}`);
  }
}

// ---- main ------------------------------------------------------------------------------------

async function tunnelRun(
  lab: Lab,
  opts: Options,
  label: string,
  startServer: () => Promise<{ pid: number; stop: () => Promise<void>; log: () => string }>,
): Promise<Figures> {
  console.log(`\n== ${label}`);
  const server = await startServer();
  let client: LabProcess | null = null;
  let ok = false;
  try {
    client = await startOurClient(lab, opts);
    const target = await tunnelTarget(lab);
    console.log(`tunnel up to ${target}`);
    const daemons = { server: server.pid, client: client.pid };
    const f = await measure(lab, target, opts, daemons);
    const idle = await idleCpu(daemons, opts.idle);
    f.idleServerCpu = idle.server;
    f.idleClientCpu = idle.client;
    if (!isAlive(server.pid)) f.notes.push("the server died");
    console.log(
      `up ${fmt(f.up, 0)} Mbit/s, down ${fmt(f.down, 0)} Mbit/s, rtt ${fmt(f.rtt, 3)} ms, ` +
        `idle CPU ${fmt(f.idleServerCpu, 2)}% / ${fmt(f.idleClientCpu, 2)}%`,
    );
    ok = true;
    return f;
  } finally {
    await client?.stop("SIGTERM", 8000, !ok || opts.keepLogs).catch(() => {});
    await server.stop();
    if (!ok || opts.keepLogs) {
      console.log(`--- ${label}: server log ---\n${tail(server.log(), 30)}`);
      console.log(`--- ${label}: client log ---\n${tail(client?.output() ?? "", 30)}`);
    }
  }
}

async function main(): Promise<void> {
  const opts = parseArgs(Deno.args);
  if (Deno.uid() !== 0) throw new Error("run as root: the lab needs network namespaces");
  const vectors = JSON.parse(
    await Deno.readTextFile(`${ROOT}/tests/fixtures/reference-vectors.json`),
  );
  const commit = (await run(null, ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], {
    check: false,
  })).stdout.trim();
  console.log(`tunnel bench: commit ${commit || "?"}, ${opts.seconds} s per iperf3 direction`);

  await Deno.mkdir(RUNTIME_DIR, { recursive: true });
  const lab = await createLab({ prefix: PREFIX }); // removes leftovers of a crashed run first
  const stops: (() => Promise<void>)[] = [];
  const results: Record<string, Figures> = {};
  try {
    const dns = await startDnsmasq({
      ns: lab.serverNs,
      listen: lab.serverAddr,
      zone: mergeZones(
        announcement({
          alias: "www",
          rootBase32: vectors.key_tree.root_base32,
          addr: lab.serverAddr,
          ports: "label",
        }),
      ),
      logQueries: false,
    });
    stops.push(() => dns.stop());
    const iperfServer = spawn(lab.serverNs, ["iperf3", "-s", "-B", "0.0.0.0", "--forceflush"], {
      name: "iperf3 -s",
    });
    stops.push(async () => void await iperfServer.stop());
    await iperfServer.waitFor("Server listening", 10_000);

    console.log("\n== plain veth");
    results.plain = await measure(lab, lab.serverAddr, opts, null);
    console.log(
      `up ${fmt(results.plain.up, 0)} Mbit/s, down ${fmt(results.plain.down, 0)} Mbit/s, ` +
        `rtt ${fmt(results.plain.rtt, 3)} ms`,
    );

    if (opts.ours) {
      results.ours = await tunnelRun(lab, opts, "our server ↔ our client", async () => {
        const p = startOurServer(lab, opts);
        await p.waitFor("serving", 60_000);
        return { pid: p.pid, stop: async () => void await p.stop(), log: () => p.output() };
      });
    }
    if (opts.reference) {
      const ref = await import("../tests/lab/reference.ts");
      await ref.prepareReferenceRoot();
      try {
        await ref.installServerKeys(`${ROOT}/tests/fixtures/`);
        results.reference = await tunnelRun(
          lab,
          opts,
          "reference server ↔ our client",
          async () => {
            const p = await ref.startReferenceServer(lab.serverNs, { hostIp: lab.serverAddr });
            return { pid: p.pid, stop: () => p.stop(), log: () => p.log() };
          },
        );
      } finally {
        await ref.restoreReferenceKeys();
        await ref.releaseReferenceRoot();
      }
    }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await destroyLab(lab);
  }

  const columns = [
    ...(results.ours ? [{ name: "ours", f: results.ours }] : []),
    ...(results.reference ? [{ name: "reference server", f: results.reference }] : []),
  ];
  printTable(results.plain, columns);
  if (opts.json) {
    await Deno.writeTextFile(opts.json, JSON.stringify({ commit, opts, results }, null, 2) + "\n");
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`tunnel bench failed: ${(e as Error).stack ?? e}`);
    Deno.exit(1);
  }
}
