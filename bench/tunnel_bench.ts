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
//   --jumbo N       also run our server and client at MTU N (e.g. 9000): one stream each way
//   --counters      after our tunnel's runs, print where packets were lost: the kernel's UDP,
//                   TCP and interface drop counters in both namespaces
//   --first N       only the first request, N times, each with a fresh client (the median
//                   says more than one run on a busy machine); our server, and with
//                   --reference the reference server too
//   --trace DIR     with --first: per fresh client, tcpdump of both TUN devices and both veth
//                   ends (tunnel port) and both daemons' logs (client -vv, reference -vv) in DIR
//   --rtt N         only the round trip: N rounds of 100 pings each over the plain veth, two
//                   relays without cryptography (C, bench/relay.c built with gcc; Deno,
//                   tests/helpers/plain_tunnel.ts) and our tunnel; min/p50/p90/p99/avg

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
  jumbo: number | null;
  first: number;
  trace: string | null;
  counters: boolean;
  rtt: number;
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
    jumbo: null,
    first: 0,
    trace: null,
    counters: false,
    rtt: 0,
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
      if (!Number.isInteger(n) || n < 1) {
        throw new Error(`${a} must be a positive integer`);
      }
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
    else if (a === "--jumbo") o.jumbo = positive(value());
    else if (a === "--first") o.first = positive(value());
    else if (a === "--trace") o.trace = value();
    else if (a === "--counters") o.counters = true;
    else if (a === "--rtt") o.rtt = positive(value());
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
  /** Four TCP streams client → server, Mbit/s. */
  up4?: number | null;
  /** The first request: DNS answer → HTTP response (wall, with curl's start), curl's own time,
   * the key download and the whole connection as the client logged them, ms. */
  firstRequest?: number | null;
  firstRequestCurl?: number | null;
  keyDownload?: number | null;
  tunnelUp?: number | null;
  /** A DNS lookup right after the first request, and one of an ordinary name before it (the
   * DNS path's own time through the client), as dig reports them, ms. */
  dnsAfter?: number | null;
  dnsBefore?: number | null;
  /** Lookups of a plain name every 50 ms while TCP up runs (through the client, whose packet
   * loop is busy with the transfer, if there is one): median and worst, ms. */
  dnsLoadMedian?: number | null;
  dnsLoadP90?: number | null;
  dnsLoadMax?: number | null;
  /** How many of the lookups took over 5 ms, of how many. */
  dnsLoadOver5?: number;
  dnsLoadCount?: number;
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
  const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(
    /\s+/,
  ).slice(1, 9)
    .map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - f[3] - f[4], total }; // idle and iowait are not busy
}

/** Measures the CPU of process trees while `during` runs: % of one core each. */
async function cpuWhile(
  pids: number[],
  during: Promise<unknown>,
): Promise<number[]> {
  const t0 = performance.now();
  const before = pids.map(treeTicks);
  await during;
  const seconds = (performance.now() - t0) / 1000;
  return pids.map((p, i) => ((treeTicks(p) - before[i]) / CLK_TCK / seconds) * 100);
}

async function iperf(
  lab: Lab,
  target: string,
  seconds: number,
  reverse: boolean,
  streams = 1,
) {
  const args = [
    "iperf3",
    "-c",
    target,
    "-t",
    String(seconds),
    "-J",
    "--connect-timeout",
    "5000",
  ];
  if (reverse) args.push("-R");
  if (streams > 1) args.push("-P", String(streams));
  const r = await run(lab.clientNs, args, {
    check: false,
    timeoutMs: (seconds + 30) * 1000,
  });
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
    return {
      mbps: null,
      error: `iperf3 exited ${r.code}: ${(r.stderr || r.stdout).trim()}`,
    };
  }
}

async function ping(lab: Lab, target: string, count: number, interval: string) {
  const r = await run(
    lab.clientNs,
    [
      "ping",
      "-q",
      "-n",
      "-c",
      String(count),
      "-i",
      interval,
      "-W",
      "1",
      target,
    ],
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

/**
 * Query times of a plain name, one lookup every 50 ms for `seconds`, in the client namespace,
 * in ms to the microsecond: a small python3 resolver of our own (one UDP query, its answer; dig only
 * reports 4 ms steps here, and starting dig each time costs more than the lookup).
 */
async function dnsWhile(lab: Lab, seconds: number): Promise<number[]> {
  const script = `
import random, socket, struct, time
name = b"".join(bytes([len(p)]) + p for p in b"plain.lab.test".split(b".")) + b"\\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
end = time.monotonic() + ${seconds}
while time.monotonic() < end:
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
    t0 = time.perf_counter()
    s.sendto(q, ("${lab.dnsServer}", 53))
    try:
        while True:
            a = s.recv(4096)
            if a[:2] == q[:2]:
                break
        print("%.3f" % ((time.perf_counter() - t0) * 1000), flush=True)
    except socket.timeout:
        print("2000", flush=True)
    time.sleep(0.05)
`;
  const r = await run(lab.clientNs, ["python3", "-c", script], {
    check: false,
    timeoutMs: (seconds + 10) * 1000,
  });
  return r.stdout.split("\n").filter((l) => /^[\d.]+$/.test(l.trim())).map(Number);
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
  const lookups = dnsWhile(lab, Math.max(1, opts.seconds - 1));
  const busy = await cpuWhile(
    daemons ? [daemons.server, daemons.client] : [],
    upRun,
  );
  const m1 = machineTicks();
  const up = await upRun;
  const dnsTimes = (await lookups).sort((a, b) => a - b);
  if (up.error) notes.push(`up: ${up.error}`);
  const down = await iperf(lab, target, opts.seconds, true);
  if (down.error) notes.push(`down: ${down.error}`);
  const up4 = await iperf(lab, target, opts.seconds, false, 4);
  if (up4.error) notes.push(`4 streams: ${up4.error}`);
  return {
    up: up.mbps,
    down: down.mbps,
    up4: up4.mbps,
    rtt: p.avg,
    rttMin: p.min,
    dnsLoadMedian: dnsTimes.length ? dnsTimes[dnsTimes.length >> 1] : null,
    dnsLoadP90: dnsTimes.length ? quantile(dnsTimes, 0.9) : null,
    dnsLoadMax: dnsTimes.length ? dnsTimes[dnsTimes.length - 1] : null,
    dnsLoadOver5: dnsTimes.filter((t) => t > 5).length,
    dnsLoadCount: dnsTimes.length,
    busyServerCpu: busy[0] ?? null,
    busyClientCpu: busy[1] ?? null,
    busyMachineCpu: ((m1.busy - m0.busy) / (m1.total - m0.total)) * 100,
    notes,
  };
}

async function idleCpu(
  daemons: { server: number; client: number },
  seconds: number,
) {
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

/** Our server, once it says it is serving: its pid, how to stop it and its log. */
async function servingOurServer(lab: Lab, opts: Options) {
  const p = startOurServer(lab, opts);
  await p.waitFor("serving", 60_000);
  return { pid: p.pid, stop: async () => void await p.stop(), log: () => p.output() };
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
    ...(opts.trace ? ["-vv"] : []),
  ], { name: "our client" });
  await client.waitFor("DNS answers go through", 60_000);
  return client;
}

const HTTP_PORT = 8080;

/**
 * The first request to a server the client has not seen: resolve the name through the client
 * (its answer starts the connection), then fetch a page over the tunnel with curl. Timed in the
 * client namespace from the DNS answer (dig exiting) to curl exiting with the response.
 */
async function firstRequest(lab: Lab) {
  const stats = `sed -n 's/.*Query time: \\([0-9]*\\) msec.*/\\1/p'`;
  const script = `b=$(dig +noall +stats +time=3 +tries=1 plain.lab.test A | ${stats}); ` +
    `a=$(dig +short +time=3 +tries=1 ${NAME} A | tail -n 1); t1=$(date +%s%N); ` +
    `c=$(curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}' http://$a:${HTTP_PORT}/); ` +
    `t2=$(date +%s%N); q=$(dig +noall +stats +time=3 +tries=1 ${NAME} A | ` +
    `${stats}); echo "$a $(( (t2 - t1) / 1000 )) $c $q $b"`;
  const r = await run(lab.clientNs, ["bash", "-c", script], {
    check: false,
    timeoutMs: 30_000,
  });
  const f = r.stdout.trim().split(/\s+/);
  if (f.length < 4 || f[2] !== "200") {
    return {
      addr: f[0] ?? "",
      wall: null,
      curl: null,
      dnsAfter: null,
      dnsBefore: null,
      error: r.stdout + r.stderr,
    };
  }
  return {
    addr: f[0],
    wall: Number(f[1]) / 1000,
    curl: Number(f[3]) * 1000,
    dnsAfter: f[4] === undefined ? null : Number(f[4]),
    dnsBefore: f[5] === undefined ? null : Number(f[5]),
    error: null,
  };
}

/** "long-term keys verified (937 parts, N requests, X ms)" and "tunnel … up (X ms)". */
function connectionTimes(
  log: string,
): { keys: number | null; partsIn: number | null; requests: number | null; up: number | null } {
  const keys = log.match(
    /long-term keys verified \(\d+ parts, (\d+) requests, (\d+) ms(?:, all parts in after (\d+) ms)?\)/,
  );
  const up = log.match(/: tunnel [0-9a-f]+ up \((\d+) ms\)/);
  return {
    keys: keys ? Number(keys[2]) : null,
    partsIn: keys?.[3] ? Number(keys[3]) : null,
    requests: keys ? Number(keys[1]) : null,
    up: up ? Number(up[1]) : null,
  };
}

/** UDP datagrams the kernel dropped for a full receive buffer in `ns` so far (all sockets). */
async function udpBufferDrops(ns: string): Promise<number | null> {
  const r = await run(ns, ["cat", "/proc/net/snmp"], { check: false });
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("Udp: "));
  if (lines.length < 2) return null;
  const names = lines[0].split(/\s+/);
  const values = lines[1].split(/\s+/);
  const i = names.indexOf("RcvbufErrors");
  return i < 0 ? null : Number(values[i]);
}

/** Resolves the announced name through the client (it answers with an internal address) and
 * waits until the tunnel carries a ping: the first one pays for the key download. */
async function tunnelTarget(lab: Lab): Promise<string> {
  const answer = await dig(lab.clientNs, NAME);
  const a = answer.answers.find((x) => x.type === "A");
  if (!a) {
    throw new Error(
      `no A record for ${NAME} through the client:\n${answer.raw}`,
    );
  }
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const r = await run(lab.clientNs, [
      "ping",
      "-n",
      "-c",
      "1",
      "-W",
      "2",
      a.data,
    ], {
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

function ratio(
  v: number | null | undefined,
  base: number | null | undefined,
): string {
  if (v === null || v === undefined || !base) return "";
  const r = v / base;
  return ` (${r >= 10 ? r.toFixed(1) : r.toFixed(r >= 0.1 ? 2 : 4)}×)`;
}

function printTable(
  plain: Figures,
  columns: { name: string; f: Figures }[],
): void {
  const rows: string[][] = [[
    "",
    "plain veth",
    ...columns.map((c) => c.name),
    "target",
  ]];
  const add = (
    label: string,
    get: (f: Figures) => number | null | undefined,
    digits: number,
    withRatio: boolean,
    target: string,
    withPlain = true,
  ) => {
    const base = get(plain);
    rows.push([
      label,
      withPlain ? fmt(base, digits) : "",
      ...columns.map((c) => fmt(get(c.f), digits) + (withRatio ? ratio(get(c.f), base) : "")),
      target,
    ]);
  };
  add("TCP client→server, Mbit/s", (f) => f.up, 0, true, "≥ 1500");
  add("TCP server→client, Mbit/s", (f) => f.down, 0, true, "≥ 1500");
  add("TCP client→server, 4 streams, Mbit/s", (f) => f.up4, 0, true, "≥ 2000");
  add("ping avg RTT, ms", (f) => f.rtt, 3, true, "");
  add("ping min RTT, ms", (f) => f.rttMin, 3, true, "");
  rows.push([
    "added avg RTT, ms",
    "",
    ...columns.map((c) =>
      c.f.rtt !== null && plain.rtt !== null ? (c.f.rtt - plain.rtt).toFixed(3) : "—"
    ),
    "≤ 0.15",
  ]);
  add(
    "first request, DNS answer → HTTP response, ms",
    (f) => f.firstRequest,
    0,
    false,
    "≤ 150 (ref. ≤ 300)",
    false,
  );
  add(
    "  of it curl's own time, ms",
    (f) => f.firstRequestCurl,
    0,
    false,
    "",
    false,
  );
  add(
    "  key download (client log), ms",
    (f) => f.keyDownload,
    0,
    false,
    "≤ 50",
    false,
  );
  add(
    "  tunnel up from DNS (client log), ms",
    (f) => f.tunnelUp,
    0,
    false,
    "",
    false,
  );
  add(
    "DNS lookup of a plain name before, ms",
    (f) => f.dnsBefore,
    0,
    false,
    "",
    false,
  );
  add(
    "DNS lookup right after, ms",
    (f) => f.dnsAfter,
    0,
    false,
    "≤ 5 more",
    false,
  );
  add("DNS lookups during TCP up, median, ms", (f) => f.dnsLoadMedian, 2, false, "");
  add("DNS lookups during TCP up, p90, ms", (f) => f.dnsLoadP90, 2, false, "");
  add("DNS lookups during TCP up, worst, ms", (f) => f.dnsLoadMax, 2, false, "≤ 5 more");
  rows.push([
    "DNS lookups during TCP up over 5 ms",
    ...[plain, ...columns.map((c) => c.f)].map((f) =>
      f.dnsLoadCount ? `${f.dnsLoadOver5} of ${f.dnsLoadCount}` : "—"
    ),
    "0",
  ]);
  add(
    "server CPU during TCP up, %",
    (f) => f.busyServerCpu,
    1,
    false,
    "",
    false,
  );
  add(
    "client CPU during TCP up, %",
    (f) => f.busyClientCpu,
    1,
    false,
    "",
    false,
  );
  add(
    "machine CPU during TCP up, % of all",
    (f) => f.busyMachineCpu,
    0,
    false,
    "",
  );
  add("server CPU idle, %", (f) => f.idleServerCpu, 2, false, "~0", false);
  add("client CPU idle, %", (f) => f.idleClientCpu, 2, false, "~0", false);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join("  ");
  console.log("\n" + line(rows[0]));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows.slice(1)) console.log(line(r));
  for (const c of [{ name: "plain veth", f: plain }, ...columns]) {
    for (const n of c.f.notes) console.log(`note (${c.name}): ${n}`);
  }
}

/**
 * --trace: tcpdump (epoch timestamps, the kernel's one clock) on the client's TUN, both veth ends
 * (tunnel port only) and the server's TUN; `save` writes them and the daemons' logs.
 */
async function startTrace(lab: Lab) {
  const dumps = [
    [lab.clientNs, "cli-tun", "pqccli0", "tcp"],
    [lab.clientNs, "cli-veth", lab.clientIf, "udp port 42424"],
    [lab.serverNs, "srv-veth", lab.serverIf, "udp port 42424"],
    [lab.serverNs, "srv-tun", "pqcserv0", "tcp"],
  ].map(([ns, name, dev, filter]) =>
    [name, spawn(ns, ["tcpdump", "-n", "-tt", "-l", "-i", dev, filter], { name })] as const
  );
  await sleep(500); // tcpdump listening
  return {
    async save(prefix: string, clientLog: string, serverLog: string) {
      await sleep(300); // the last packets
      for (const [name, d] of dumps) {
        await d.stop("SIGINT", 3000, false).catch(() => {});
        await Deno.writeTextFile(`${prefix}-${name}.txt`, d.output());
      }
      await Deno.writeTextFile(`${prefix}-client.log`, clientLog);
      await Deno.writeTextFile(`${prefix}-server.log`, serverLog);
    },
  };
}

/** --first N: the first request only, N fresh clients against one server. */
async function firstRequests(
  lab: Lab,
  opts: Options,
  label: string,
  startServer: () => Promise<{ stop: () => Promise<void>; log: () => string }>,
): Promise<void> {
  console.log(`\n== ${label}: first request, ${opts.first} fresh clients`);
  const server = await startServer();
  const rows: number[][] = [];
  try {
    for (let i = 0; i < opts.first; i++) {
      const client = await startOurClient(lab, opts);
      const trace = opts.trace ? await startTrace(lab) : null;
      try {
        const drops0 = await udpBufferDrops(lab.serverNs);
        const first = await firstRequest(lab);
        const drops1 = await udpBufferDrops(lab.serverNs);
        const t = connectionTimes(client.output());
        const failed = first.error ? ` — failed: ${first.error.trim()}` : "";
        const lost = drops0 === null || drops1 === null ? "?" : String(drops1 - drops0);
        console.log(
          `first request ${fmt(first.wall, 0)} ms (curl ${fmt(first.curl, 0)} ms), ` +
            `key download ${fmt(t.keys, 0)} ms (all parts in ${fmt(t.partsIn, 0)}, ` +
            `${fmt(t.requests, 0)} requests, ${lost} dropped by a full server socket), ` +
            `tunnel up ${fmt(t.up, 0)} ms, ` +
            `DNS after ${fmt(first.dnsAfter, 0)} ms (before ${fmt(first.dnsBefore, 0)} ms)` +
            failed,
        );
        if (first.wall !== null && t.keys !== null && t.up !== null) {
          rows.push([
            first.wall,
            t.keys,
            t.up,
            first.dnsAfter ?? NaN,
            first.dnsBefore ?? NaN,
          ]);
        }
      } finally {
        if (trace) await trace.save(`${opts.trace}/${i}`, client.output(), server.log());
        await client.stop("SIGTERM", 8000, false).catch(() => {});
      }
    }
  } finally {
    await server.stop();
  }
  const sorted = (k: number) => rows.map((r) => r[k]).sort((a, b) => a - b);
  const median = (k: number) => {
    const v = sorted(k);
    return v.length ? v[Math.floor(v.length / 2)] : null;
  };
  const best = (k: number) => sorted(k)[0] ?? null;
  const worst = (k: number) => sorted(k).at(-1) ?? null;
  for (const [what, pick] of [["median", median], ["best", best], ["worst", worst]] as const) {
    console.log(
      `${what} of ${rows.length}: first request ${
        fmt(pick(0), 0)
      } ms (target ≤ 150, ref. ≤ 300), ` +
        `key download ${fmt(pick(1), 0)} ms (target ≤ 50), tunnel up ${fmt(pick(2), 0)} ms, ` +
        `DNS after ${fmt(pick(3), 0)} ms (plain name before: ${fmt(pick(4), 0)} ms)`,
    );
  }
}

/** Every reply's round trip of one ping run (not -q), ms, sorted. */
async function pingTimes(lab: Lab, target: string, count: number): Promise<number[]> {
  const r = await run(lab.clientNs, [
    "ping",
    "-n",
    "-c",
    String(count),
    "-i",
    "0.01",
    "-W",
    "1",
    target,
  ], {
    check: false,
    timeoutMs: 60_000,
  });
  return [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
}

/** The q-quantile of sorted values. */
function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/**
 * The round trip's floor: two relays without cryptography, each end its own TUN device whose
 * packets travel as bare UDP datagrams to the other end's relay. "C relay": bench/relay.c, one
 * blocking poll() a packet (built here with gcc). "Deno relay": tests/helpers/plain_tunnel.ts
 * (Deno's async ops: a wait on the thread pool, then the JS thread). Without gcc the C relay
 * is left out.
 */
async function startRelays(
  lab: Lab,
): Promise<{ name: string; target: string; stop: () => Promise<void> }[]> {
  const out: { name: string; target: string; stop: () => Promise<void> }[] = [];
  const dir = await Deno.makeTempDir({ prefix: "pqts-relay" });
  const bin = `${dir}/relay`;
  const cc = await run(null, ["gcc", "-O2", "-o", bin, `${ROOT}/bench/relay.c`], { check: false })
    .catch((e) => ({ code: 1, stderr: String(e) }));
  if (cc.code === 0) {
    const procs: LabProcess[] = [];
    const ends = [
      { ns: lab.serverNs, tunAddr: "10.98.0.1", argv: [bin, "pqcrelay0", lab.serverAddr, "42427"] },
      {
        ns: lab.clientNs,
        tunAddr: "10.98.0.2",
        argv: [bin, "pqcrelay0", lab.clientAddr, "42427", lab.serverAddr, "42427"],
      },
    ];
    for (const e of ends) {
      const p = spawn(e.ns, e.argv, { name: "C relay" });
      procs.push(p);
      await p.waitFor("up", 10_000);
      await run(e.ns, ["ip", "addr", "add", `${e.tunAddr}/24`, "dev", "pqcrelay0"]);
      await run(e.ns, ["ip", "link", "set", "pqcrelay0", "mtu", "1400", "up"]);
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {}); // running, no longer needed
    out.push({
      name: "C relay",
      target: "10.98.0.1",
      stop: async () => {
        for (const p of procs) await p.stop("SIGKILL", 1000).catch(() => {});
      },
    });
  } else {
    console.log(`no C relay (gcc: ${cc.stderr.trim().split("\n")[0]})`);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const plain = (addr: string, listen: string, to: string[]) => [
    Deno.execPath(),
    "run",
    "-A",
    "--unstable-net",
    `${ROOT}/tests/helpers/plain_tunnel.ts`,
    "--address",
    addr,
    "--mtu",
    "1400",
    "--listen",
    listen,
    ...to,
  ];
  const srv = spawn(lab.serverNs, plain("10.99.0.1", `${lab.serverAddr}:42428`, []), {
    name: "Deno relay (server)",
  });
  const cli = spawn(
    lab.clientNs,
    plain("10.99.0.2", `${lab.clientAddr}:42428`, ["--to", `${lab.serverAddr}:42428`]),
    { name: "Deno relay (client)" },
  );
  await srv.waitFor("up", 30_000);
  await cli.waitFor("up", 30_000);
  out.push({
    name: "Deno relay",
    target: "10.99.0.1",
    stop: async () => {
      await cli.stop("SIGTERM", 2000).catch(() => {});
      await srv.stop("SIGTERM", 2000).catch(() => {});
    },
  });
  return out;
}

/**
 * --rtt N: ping rounds alternating between the plain veth, the relays without cryptography
 * (the floor of any TUN-to-UDP tunnel here) and our tunnel; same server. Each path's replies of
 * all rounds are pooled for the distribution.
 */
async function rttRounds(lab: Lab, opts: Options): Promise<void> {
  console.log(`\n== round trip, ${opts.rtt} rounds of 100 pings at 10 ms`);
  const relays = await startRelays(lab);
  const server = await servingOurServer(lab, opts);
  const client = await startOurClient(lab, opts);
  const paths: { name: string; target: string; all: number[]; avgs: number[]; mins: number[] }[] =
    [];
  try {
    const target = await tunnelTarget(lab);
    for (const r of relays) {
      // The first packets open the relays' paths (ARP); not part of the figures.
      await run(lab.clientNs, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", r.target], {
        check: false,
      });
    }
    paths.push({ name: "plain veth", target: lab.serverAddr, all: [], avgs: [], mins: [] });
    for (const r of relays) {
      paths.push({ name: r.name, target: r.target, all: [], avgs: [], mins: [] });
    }
    paths.push({ name: "ours", target, all: [], avgs: [], mins: [] });
    for (let i = 0; i < opts.rtt; i++) {
      const parts: string[] = [];
      for (const p of paths) {
        const t = await pingTimes(lab, p.target, 100);
        if (t.length === 0) {
          parts.push(`${p.name} —`);
          continue;
        }
        const avg = t.reduce((a, b) => a + b, 0) / t.length;
        p.all.push(...t);
        p.avgs.push(avg);
        p.mins.push(t[0]);
        parts.push(`${p.name} ${t[0].toFixed(3)} / ${avg.toFixed(3)}`);
      }
      console.log(`min / avg ms: ${parts.join(", ")}`);
    }
  } finally {
    await client.stop("SIGTERM", 8000, opts.keepLogs).catch(() => {});
    await server.stop();
    for (const r of relays) await r.stop();
    if (opts.keepLogs) {
      console.log(`--- server log ---\n${tail(server.log(), 30)}`);
      console.log(`--- client log ---\n${tail(client.output(), 30)}`);
    }
  }
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
  const base = paths[0];
  if (!base || base.all.length === 0) return;
  const baseAll = base.all.sort((a, b) => a - b);
  console.log(
    '\nreplies pooled over the rounds, ms; "added" is against the plain veth (quantile - quantile)',
  );
  const cols = [
    "path",
    "n",
    "min",
    "p50",
    "p90",
    "p99",
    "avg",
    "added min",
    "added p50",
    "added avg",
  ];
  const rows: string[][] = [cols];
  for (const p of paths) {
    if (p.all.length === 0) continue;
    const s = p.all.sort((a, b) => a - b);
    const avg = s.reduce((a, b) => a + b, 0) / s.length;
    const baseAvg = baseAll.reduce((a, b) => a + b, 0) / baseAll.length;
    rows.push([
      p.name,
      String(s.length),
      ...[s[0], quantile(s, 0.5), quantile(s, 0.9), quantile(s, 0.99), avg].map((v) =>
        v.toFixed(3)
      ),
      ...(p === base ? ["", "", ""] : [
        (s[0] - baseAll[0]).toFixed(3),
        (quantile(s, 0.5) - quantile(baseAll, 0.5)).toFixed(3),
        (avg - baseAvg).toFixed(3),
      ]),
    ]);
  }
  const widths = cols.map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) {
    console.log(
      r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "),
    );
  }
  const ours = paths[paths.length - 1];
  if (ours.avgs.length) {
    console.log(
      `median of ${ours.avgs.length} rounds: ours added RTT min ${
        (median(ours.mins) - median(base.mins)).toFixed(3)
      } ms, avg ${(median(ours.avgs) - median(base.avgs)).toFixed(3)} ms (target ≤ 0.15)`,
    );
  }
}

// ---- main ------------------------------------------------------------------------------------

/** Drop, retransmission and reordering counters (nstat, interfaces) of both namespaces. */
async function counters(lab: Lab): Promise<Map<string, number>> {
  const wanted = /Rcvbuf|InErrors|Retrans|Reorder|LossProbe|Drop|DSACK|Timeouts|OFO|Undo|Recovery/;
  const out = new Map<string, number>();
  for (const [side, ns] of [["server", lab.serverNs], ["client", lab.clientNs]]) {
    const nstat = await run(ns, ["nstat", "-asz"], { check: false });
    for (const f of nstat.stdout.split("\n").map((l) => l.trim().split(/\s+/))) {
      if (f.length >= 2 && wanted.test(f[0])) out.set(`${side} ${f[0]}`, Number(f[1]));
    }
    const link = await run(ns, ["ip", "-s", "-o", "link"], { check: false });
    for (const l of link.stdout.split("\n").filter((l) => l.includes("link/"))) {
      const name = l.split(":")[1]?.trim();
      // "RX: bytes packets errors dropped ..." and then their values; the same for TX
      const nums = l.replace(/\\/g, " ").split(/\s+/);
      for (const dir of ["RX:", "TX:"]) {
        const i = nums.indexOf(dir);
        if (i >= 0) out.set(`${side} ${name} ${dir} dropped`, Number(nums[i + 10]));
      }
    }
  }
  return out;
}

function printCounterDiff(before: Map<string, number>, after: Map<string, number>): void {
  const moved = [...after].filter(([k, v]) => v - (before.get(k) ?? 0) > 0)
    .map(([k, v]) => `${k} +${v - (before.get(k) ?? 0)}`);
  console.log(`counters during the iperf3 runs: ${moved.join(", ") || "none moved"}`);
}

async function tunnelRun(
  lab: Lab,
  opts: Options,
  label: string,
  startServer: () => Promise<
    { pid: number; stop: () => Promise<void>; log: () => string }
  >,
): Promise<Figures> {
  console.log(`\n== ${label}`);
  const server = await startServer();
  let client: LabProcess | null = null;
  let ok = false;
  try {
    client = await startOurClient(lab, opts);
    const first = await firstRequest(lab);
    const times = connectionTimes(client.output());
    const target = await tunnelTarget(lab);
    console.log(
      `tunnel up to ${target}; first request ${fmt(first.wall, 0)} ms ` +
        `(curl ${fmt(first.curl, 0)} ms), key download ${fmt(times.keys, 0)} ms`,
    );
    const daemons = { server: server.pid, client: client.pid };
    const before = opts.counters ? await counters(lab) : null;
    const f = await measure(lab, target, opts, daemons);
    if (before) printCounterDiff(before, await counters(lab));
    f.firstRequest = first.wall;
    f.firstRequestCurl = first.curl;
    f.dnsAfter = first.dnsAfter;
    f.dnsBefore = first.dnsBefore;
    f.keyDownload = times.keys;
    f.tunnelUp = times.up;
    if (first.error) {
      f.notes.push(`first request failed: ${first.error.trim()}`);
    }
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
      console.log(
        `--- ${label}: client log ---\n${tail(client?.output() ?? "", 30)}`,
      );
    }
  }
}

async function main(): Promise<void> {
  const opts = parseArgs(Deno.args);
  if (Deno.uid() !== 0) {
    throw new Error("run as root: the lab needs network namespaces");
  }
  const vectors = JSON.parse(
    await Deno.readTextFile(`${ROOT}/tests/fixtures/reference-vectors.json`),
  );
  const commit = (await run(null, ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], {
    check: false,
  })).stdout.trim();
  console.log(
    `tunnel bench: commit ${commit || "?"}, ${opts.seconds} s per iperf3 direction`,
  );

  // The client makes its runtime directory itself (and refuses one it did not make): a crashed
  // run's is removed first, and this run's at the end.
  await Deno.remove(RUNTIME_DIR, { recursive: true }).catch(() => {});
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
    const iperfServer = spawn(lab.serverNs, [
      "iperf3",
      "-s",
      "-B",
      "0.0.0.0",
      "--forceflush",
    ], {
      name: "iperf3 -s",
    });
    stops.push(async () => void await iperfServer.stop());
    await iperfServer.waitFor("Server listening", 10_000);
    const webRoot = await Deno.makeTempDir({ prefix: "pqts-perf-web" });
    await Deno.writeTextFile(
      `${webRoot}/index.html`,
      "hello through the tunnel\n",
    );
    const web = spawn(lab.serverNs, [
      "python3",
      "-m",
      "http.server",
      String(HTTP_PORT),
      "--bind",
      "0.0.0.0",
      "--directory",
      webRoot,
    ], { name: "http server" });
    stops.push(async () => {
      await web.stop();
      await Deno.remove(webRoot, { recursive: true }).catch(() => {});
    });

    if (opts.rtt > 0) return await rttRounds(lab, opts);
    if (opts.first > 0) {
      if (opts.ours) {
        await firstRequests(lab, opts, "our server", () => servingOurServer(lab, opts));
      }
      if (opts.reference) {
        const ref = await import("../tests/lab/reference.ts");
        await ref.prepareReferenceRoot();
        try {
          await ref.installServerKeys(`${ROOT}/tests/fixtures/`);
          await firstRequests(lab, opts, "reference server", async () => {
            const p = await ref.startReferenceServer(lab.serverNs, {
              hostIp: lab.serverAddr,
              veryVerbose: opts.trace !== null,
            });
            return { stop: () => p.stop(), log: () => p.log() };
          });
        } finally {
          await ref.restoreReferenceKeys();
          await ref.releaseReferenceRoot();
        }
      }
      return;
    }

    console.log("\n== plain veth");
    results.plain = await measure(lab, lab.serverAddr, opts, null);
    console.log(
      `up ${fmt(results.plain.up, 0)} Mbit/s, down ${fmt(results.plain.down, 0)} Mbit/s, ` +
        `rtt ${fmt(results.plain.rtt, 3)} ms`,
    );

    if (opts.ours) {
      results.ours = await tunnelRun(
        lab,
        opts,
        "our server ↔ our client",
        () => servingOurServer(lab, opts),
      );
    }
    if (opts.ours && opts.jumbo !== null) {
      const jumbo = { ...opts, mtu: opts.jumbo };
      results.jumbo = await tunnelRun(
        lab,
        jumbo,
        `ours at MTU ${opts.jumbo}`,
        () => servingOurServer(lab, jumbo),
      );
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
            const p = await ref.startReferenceServer(lab.serverNs, {
              hostIp: lab.serverAddr,
            });
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
    await Deno.remove(RUNTIME_DIR, { recursive: true }).catch(() => {});
  }

  const columns = [
    ...(results.ours ? [{ name: "ours", f: results.ours }] : []),
    ...(results.jumbo ? [{ name: `ours, MTU ${opts.jumbo}`, f: results.jumbo }] : []),
    ...(results.reference ? [{ name: "reference server", f: results.reference }] : []),
  ];
  printTable(results.plain, columns);
  if (opts.json) {
    await Deno.writeTextFile(
      opts.json,
      JSON.stringify({ commit, opts, results }, null, 2) + "\n",
    );
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
