// Issue 9 against the running client, in three network namespaces:
//   pqts-dnsatk-srv  198.18.0.1   dnsmasq (the zone, our announcement), our server, HTTP, a TCP
//                    198.18.0.53  echo server, and a DNS responder with answers made to order
//   pqts-dnsatk-cli  198.18.0.2   `pqconnect client`
//                    198.18.1.2   a second link, to:
//   pqts-dnsatk-atk  198.18.1.66  the attacker, who can send the client any UDP datagram
//
// Checks: 100,000 forged answers (to random ports, to the port of the client's conversation
// with its resolver, to the tunnel port) create no server entry and make the client send
// nothing (iptables counting rules); a lookup during the flood is still rewritten and tunnelled;
// answers over TCP and HTTPS records are rewritten; the canary is NXDOMAIN; an answer naming a
// live server at another address leaves the tunnel where it is; ~65 kB answers do not hold up
// a TCP conversation through the tunnel by more than 1 ms.
//
// Needs root (namespaces, TUN, NFQUEUE).

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  type Lab,
  labLeftovers,
  type LabProcess,
  notRootReason,
  removeNamespace,
  run,
  sleep,
  spawn,
} from "./lab/netns.ts";
import { dig, type Dnsmasq, mergeZones, startDnsmasq } from "./lab/dnsmasq.ts";
import { addNamespace, waitForLink } from "./helpers/attacker_ns.ts";
import {
  announceZone,
  cacheDependencies,
  curl,
  denoEnv,
  describeCurl,
  ensurePrivsepUser,
  fixtureKeyDir,
  labPermissionProblem,
  logs,
  type OurClient,
  pqconnectArgv,
  PROJECT_DIR,
  removeStaleTempDirs,
  startHttpServer,
  startOurClient,
  startOurServer,
  statusPermissions,
  Teardown,
} from "./helpers/lab_util.ts";

const PREFIX = "pqts-dnsatk";
const ATTACKER_NS = `${PREFIX}-atk`;
const ATTACKER = "198.18.1.66";
const CLIENT_SIDE = "198.18.1.2";
const RESPONDER = "198.18.0.53";
const HIJACK = "198.18.0.99";
const HTTP_PORT = 8080;
const ECHO_PORT = 8081;
/** The source port of the client's lookups during the flood: the attacker aims at it too. */
const LOOKUP_PORT = 40053;
/** A client port whose conntrack entry the attacker creates first, forging the resolver. */
const PRESEED_PORT = 40054;
const FLOOD = 100_000;
const FLOOD_SECONDS = 40;
const TOOLS = `${PROJECT_DIR}/tests/helpers/dns_lab_tools.ts`;
const skip = notRootReason();
if (skip) console.log(`dns_attack_test: skipped, ${skip}`);

/**
 * What the RTT tool prints: one line per round trip, ~25 bytes, at up to ~25 000 a second for its
 * 12 s. The lab keeps 4 MiB of a process's output by default and drops the oldest beyond that,
 * which took the idle samples of the first 2 s (CI once: no idle sample left, the figures line
 * failed on an empty list).
 */
const RTT_OUTPUT_CHARS = 32 << 20;

function tool(
  ns: string,
  args: string[],
  name: string,
  net = "--allow-net",
  maxLogChars?: number,
): LabProcess {
  return spawn(ns, [
    Deno.execPath(),
    "run",
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    "--unstable-net",
    net,
    "--allow-read=" + PROJECT_DIR,
    TOOLS,
    ...args,
  ], { name, env: denoEnv(), maxLogChars });
}

async function started(p: LabProcess): Promise<LabProcess> {
  try {
    await p.waitFor("READY", 30_000);
  } catch (e) {
    await p.stop("SIGTERM", 2000);
    throw e;
  }
  return p;
}

/** The attacker's namespace, on a veth link of its own to the client namespace. */
async function addAttacker(lab: Lab): Promise<void> {
  await addNamespace(ATTACKER_NS);
  await run(null, [
    "ip",
    "-n",
    ATTACKER_NS,
    "link",
    "add",
    "veth-atk",
    "type",
    "veth",
    "peer",
    "name",
    "veth-cla",
    "netns",
    lab.clientNs,
  ]);
  await run(null, ["ip", "-n", ATTACKER_NS, "addr", "add", `${ATTACKER}/24`, "dev", "veth-atk"]);
  await run(null, [
    "ip",
    "-n",
    lab.clientNs,
    "addr",
    "add",
    `${CLIENT_SIDE}/24`,
    "dev",
    "veth-cla",
  ]);
  await run(null, ["ip", "-n", ATTACKER_NS, "link", "set", "veth-atk", "up"]);
  await run(null, ["ip", "-n", lab.clientNs, "link", "set", "veth-cla", "up"]);
  // The attacker reaches the client's main address too (the one its lookups come from).
  await run(null, [
    "ip",
    "-n",
    ATTACKER_NS,
    "route",
    "add",
    `${lab.clientAddr}/32`,
    "via",
    CLIENT_SIDE,
  ]);
  await run(null, ["ip", "-n", lab.serverNs, "addr", "add", `${RESPONDER}/24`, "dev", "veth-srv"]);
  await waitForLink(ATTACKER_NS, CLIENT_SIDE, "attacker link stays down");
}

/** Counting-only rules in the client namespace (no target: they count and fall through). */
async function addCounters(ns: string): Promise<void> {
  for (
    const rule of [
      ["OUTPUT", "-d", ATTACKER, "-p", "udp"],
      ["OUTPUT", "-d", ATTACKER, "-p", "icmp"],
      ["OUTPUT", "-d", ATTACKER],
      ["OUTPUT", "-d", HIJACK],
      ["INPUT", "-s", ATTACKER, "-p", "udp", "--sport", "53"],
    ]
  ) {
    await run(ns, ["iptables", "-w", "-A", ...rule]);
  }
}

/** Packet counts of the counting rules, by their place in addCounters. */
async function counters(ns: string): Promise<Record<string, number>> {
  const chain = async (name: string) => {
    const out = (await run(ns, ["iptables", "-w", "-nvxL", name, "--line-numbers"])).stdout;
    const byNumber = new Map<number, number>();
    for (const line of out.split("\n")) {
      const f = line.trim().split(/\s+/);
      if (/^\d+$/.test(f[0] ?? "") && /^\d+$/.test(f[1] ?? "")) {
        byNumber.set(Number(f[0]), Number(f[1]));
      }
    }
    return byNumber;
  };
  const out = await chain("OUTPUT");
  const inp = await chain("INPUT");
  return {
    udpToAttacker: out.get(1)!,
    icmpToAttacker: out.get(2)!,
    allToAttacker: out.get(3)!,
    toHijack: out.get(4)!,
    floodReceived: inp.get(1)!,
  };
}

interface Status {
  servers: { name: string; external: string; internal: string; state: string }[];
  dropped: Record<string, number>;
  dns: Record<string, number>;
}

async function status(ns: string, runtimeDir: string): Promise<Status> {
  const r = await run(
    ns,
    pqconnectArgv(statusPermissions(runtimeDir), ["status", "--json", "--runtime-dir", runtimeDir]),
    { env: denoEnv() },
  );
  return JSON.parse(r.stdout) as Status;
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

Deno.test({
  name: "dns attack: forged answers, TCP and HTTPS answers, canary, hijack, maximal answers",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const problem = labPermissionProblem("tests/dns_attack_test.ts");
    if (problem) throw new Error(problem);
    const runtimeDir = `/run/${PREFIX}`;
    let lab: Lab | null = null;
    let work: string | null = null;
    let dns: Dnsmasq | null = null;
    let client: OurClient | null = null;
    const procs: LabProcess[] = [];
    let failure: unknown = null;
    const allLogs = () =>
      logs({
        client: client?.process.output(),
        dnsmasq: dns?.log(),
        ...Object.fromEntries(procs.map((p) => [p.name, p.output()])),
      });
    try {
      await cacheDependencies();
      await run(null, [Deno.execPath(), "cache", `--config=${PROJECT_DIR}/deno.json`, TOOLS], {
        env: denoEnv(),
      });
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      await addAttacker(lab);
      const { serverNs, clientNs, serverAddr } = lab;
      await Deno.remove(runtimeDir, { recursive: true }).catch(() => {});
      await removeStaleTempDirs([`${PREFIX}-`]);
      work = await Deno.makeTempDir({ prefix: `${PREFIX}-` });
      const keyDir = await fixtureKeyDir(work);
      const ports = { crypto: 42424, key: 42425 };
      const announced = await announceZone(keyDir, "www.lab.test", serverAddr, ports);
      const pq1 = announced.pq1Name;
      dns = await startDnsmasq({
        ns: serverNs,
        listen: serverAddr,
        zone: mergeZones(announced.zone, { hosts: [{ name: "plain.lab.test", addr: serverAddr }] }),
        logQueries: false,
      });
      procs.push(
        await startOurServer(serverNs, { keyDir, port: 42424, keyPort: 42425, hostIp: serverAddr }),
      );
      procs.push(await startHttpServer(serverNs, HTTP_PORT));
      procs.push(await started(tool(serverNs, ["echo", String(ECHO_PORT)], "echo")));
      procs.push(await started(tool(serverNs, ["responder", RESPONDER], "responder")));
      await addCounters(clientNs);
      client = await startOurClient(clientNs, runtimeDir);

      // A live tunnel first.
      const url = `http://www.lab.test:${HTTP_PORT}/`;
      const first = await curl(clientNs, url, { maxSec: 30 });
      assert.equal(first.http, "200", `${describeCurl(first)}\n${allLogs()}`);
      assert.match(first.remoteIp, /^10\.43\./);
      const internal = first.remoteIp;
      const before = await status(clientNs, runtimeDir);
      assert.equal(before.servers.length, 1);

      // --- the flood, and a genuine lookup in the middle of it
      const c0 = await counters(clientNs);
      const attacker = await started(
        tool(ATTACKER_NS, [
          "flood",
          ATTACKER,
          lab.clientAddr,
          String(FLOOD),
          String(FLOOD_SECONDS),
          String(LOOKUP_PORT),
          "42423",
        ], "attacker"),
      );
      procs.push(attacker);
      await sleep(500);
      const during = await run(clientNs, [
        "dig",
        "+time=3",
        "+tries=2",
        "-b",
        `${lab.clientAddr}#${LOOKUP_PORT}`,
        "www.lab.test",
        "A",
      ], { check: false });
      const duringCurl = await curl(clientNs, `${url}during-flood`, { maxSec: 20 });
      const sentLine = await attacker.waitFor(/SENT \d+ in [\d.]+ s/, (FLOOD_SECONDS + 10) * 1000);
      await sleep(1000);
      const c1 = await counters(clientNs);
      const afterFlood = await status(clientNs, runtimeDir);
      const sent = Number(sentLine.match(/SENT (\d+)/)![1]);
      const floodSeconds = Number(sentLine.match(/in ([\d.]+) s/)![1]);
      assert.equal(sent, FLOOD, `the attacker sent only ${sentLine}`);
      assert.match(
        during.stdout,
        new RegExp(`${pq1.replaceAll(".", "\\.")}\\.\\s+0\\s+IN\\s+A\\s+10\\.43\\.`),
        `lookup during the flood:\n${during.stdout}`,
      );
      assert.equal(duringCurl.http, "200", describeCurl(duringCurl));
      assert.equal(duringCurl.remoteIp, internal);
      assert.deepEqual(
        afterFlood.servers.map((s) => s.name),
        before.servers.map((s) => s.name),
        "the flood created server entries",
      );
      const udpOut = c1.udpToAttacker - c0.udpToAttacker;
      const icmpOut = c1.icmpToAttacker - c0.icmpToAttacker;
      const received = c1.floodReceived - c0.floodReceived;
      assert.equal(udpOut, 0, "datagrams from the client to the attacker");
      const judged = (s: Status) => s.dns.rewritten + s.dns.unchanged + s.dns.malformed;
      console.log(
        `FIGURES dns attack: ${sent} forged answers in ${floodSeconds.toFixed(1)} s ` +
          `(${(sent / floodSeconds).toFixed(0)}/s), ${received} reached the client namespace; ` +
          `server entries ${before.servers.length} before, ${afterFlood.servers.length} after; ` +
          `UDP datagrams from the client to the attacker: ${udpOut}; ICMP (kernel port ` +
          `unreachable, rate-limited): ${icmpOut}; answers the worker judged during the flood: ` +
          `${judged(afterFlood) - judged(before)} (the genuine lookups); lookup during the flood ` +
          `rewritten to ${internal} and tunnelled (HTTP 200 in ${duringCurl.seconds.toFixed(3)} s)`,
      );

      // --- answers over TCP
      const tcpA = await run(clientNs, ["dig", "+tcp", "+time=3", "www.lab.test", "A"]);
      assert.match(tcpA.stdout, /IN\s+A\s+10\.43\./, tcpA.stdout);
      const tcpAAAA = await run(clientNs, ["dig", "+tcp", "+time=3", "www.lab.test", "AAAA"]);
      const records = (text: string) => text.split("\n").filter((l) => l && !l.startsWith(";"));
      assert.ok(records(tcpAAAA.stdout).every((l) => !/\sAAAA\s/.test(l)), tcpAAAA.stdout);

      // --- an HTTPS record of the announced name
      const https = await run(clientNs, ["dig", "+time=3", `@${RESPONDER}`, pq1, "HTTPS"]);
      assert.match(https.stdout, /ipv4hint=10\.43\.\d+\.\d+/, https.stdout);
      assert.match(https.stdout, /ipv6hint=100::/, https.stdout);
      assert.doesNotMatch(https.stdout, /198\.18\.0\.1|2001:db8/, https.stdout);

      // --- the canary
      const canary = await dig(clientNs, "use-application-dns.net", "A", RESPONDER);
      assert.equal(canary.status, "NXDOMAIN", canary.raw);

      // --- conntrack pre-seeding: a datagram forged from the resolver's address creates the
      // entry for a client port before the client uses it, so the genuine answer to a later
      // lookup from that port travels in the entry's original direction. It must still be
      // edited (protection never silently off).
      await run(clientNs, ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
      await run(clientNs, ["sysctl", "-qw", "net.ipv4.conf.veth-cla.rp_filter=0"]);
      await run(null, [
        "ip",
        "-n",
        ATTACKER_NS,
        "addr",
        "add",
        `${RESPONDER}/32`,
        "dev",
        "veth-atk",
      ]);
      const seen = [
        "-s",
        RESPONDER,
        "-p",
        "udp",
        "--sport",
        "53",
        "--dport",
        String(PRESEED_PORT),
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
      ];
      await run(clientNs, ["iptables", "-I", "INPUT", ...seen]);
      await run(ATTACKER_NS, [
        "python3",
        "-c",
        "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " +
        "s.bind((sys.argv[1], 53)); s.sendto(bytes(12), (sys.argv[2], int(sys.argv[3])))",
        RESPONDER,
        lab.clientAddr,
        String(PRESEED_PORT),
      ]);
      await sleep(200);
      const seeded = await run(clientNs, ["iptables", "-nvxL", "INPUT"]);
      const seedLine = seeded.stdout.split("\n").find((l) => l.includes(`dpt:${PRESEED_PORT}`));
      assert.ok(seedLine && Number(seedLine.trim().split(/\s+/)[0]) >= 1, seeded.stdout);
      const preseeded = await run(clientNs, [
        "dig",
        "+time=3",
        "+tries=1",
        "+short",
        "-b",
        `${lab.clientAddr}#${PRESEED_PORT}`,
        `@${RESPONDER}`,
        pq1,
        "A",
      ]);
      assert.match(preseeded.stdout.trim(), /^10\.43\.\d+\.\d+$/m, preseeded.stdout);
      assert.doesNotMatch(preseeded.stdout, /198\.18\./, preseeded.stdout);
      console.log(
        `FIGURES dns attack: entry pre-seeded from the resolver's forged address for port ` +
          `${PRESEED_PORT}; the genuine answer from that port still rewritten ` +
          `(${preseeded.stdout.trim().split("\n").join(" ")})`,
      );

      // --- a hijack answer for the live server
      const c2 = await counters(clientNs);
      const hijack = await dig(clientNs, `hijack.${pq1}`, "A", RESPONDER);
      assert.deepEqual(hijack.answers.map((a) => a.data), [internal], hijack.raw);
      const after = await curl(clientNs, `${url}after-hijack`, { maxSec: 10 });
      assert.equal(after.http, "200", describeCurl(after));
      await sleep(500);
      const c3 = await counters(clientNs);
      const st = await status(clientNs, runtimeDir);
      assert.equal(st.servers[0].external, serverAddr, "the tunnel moved");
      assert.equal(st.servers[0].state, "up");
      assert.equal(c3.toHijack - c2.toHijack, 0, "packets to the hijack address");
      console.log(
        `FIGURES dns attack: hijack answer (${pq1} A ${HIJACK}) rewritten to ${internal}; ` +
          `tunnel stays at ${st.servers[0].external}; packets to ${HIJACK}: ` +
          `${c3.toHijack - c2.toHijack}; TCP answer and HTTPS record rewritten; canary NXDOMAIN`,
      );

      // --- maximal answers while a TCP conversation runs through the tunnel. The baseline is
      // the same answer for a name without an announcement: the kernel, the queue, the channel
      // and dig do the same work for it, only the edit is missing.
      const slicesBefore = st.dns.slices;
      const rttProc = await started(
        tool(
          clientNs,
          ["rtt", internal, String(ECHO_PORT), "12"],
          "rtt",
          undefined,
          RTT_OUTPUT_CHARS,
        ),
      );
      procs.push(rttProc);
      const t0 = performance.now();
      await sleep(2500);
      const windows: { kind: "pq1" | "plain"; from: number; to: number }[] = [];
      for (let i = 0; i < 10; i++) {
        const kind = i % 2 === 0 ? "pq1" : "plain";
        const name = kind === "pq1" ? `max.${pq1}` : "max.plain.lab.test";
        const from = performance.now() - t0;
        const r = await run(clientNs, [
          "dig",
          "+time=3",
          "+bufsize=65535",
          "+ignore",
          `@${RESPONDER}`,
          name,
          "A",
        ], { check: false });
        windows.push({ kind, from, to: performance.now() - t0 + 50 });
        assert.match(r.stdout, /ANSWER: 40\d\d/, r.stdout.slice(0, 400));
        const head = r.stdout.slice(0, 20_000);
        if (kind === "pq1") assert.doesNotMatch(head, /IN\s+A\s+198\.18\./, "not rewritten");
        else assert.match(head, /IN\s+A\s+198\.18\./, "plain answer changed");
        await sleep(300);
      }
      await rttProc.waitFor("DONE", 20_000);
      const samples = rttProc.output().split("\n").filter((l) => l.startsWith("RTT ")).map((l) => {
        const [, t, r] = l.split(" ");
        return { t: Number(t), rtt: Number(r) };
      });
      // Both clocks start when the RTT client connects (to within a few ms).
      const inWindows = (kind: string) =>
        samples.filter((s) => windows.some((w) => w.kind === kind && s.t >= w.from && s.t <= w.to))
          .map((s) => s.rtt);
      const idle = samples.filter((s) => s.t < 2000).map((s) => s.rtt);
      const pq1Rtt = inWindows("pq1");
      const plainRtt = inWindows("plain");
      const st2 = await status(clientNs, runtimeDir);
      const fmt = (xs: number[]) =>
        xs.length === 0
          ? "no round trips"
          : `median ${quantile(xs, 0.5).toFixed(3)}, p99 ${quantile(xs, 0.99).toFixed(3)}, max ${
            Math.max(...xs).toFixed(3)
          } ms (${xs.length} round trips)`;
      const delay = quantile(pq1Rtt, 0.99) - quantile(plainRtt, 0.99);
      const medianDelay = quantile(pq1Rtt, 0.5) - quantile(plainRtt, 0.5);
      const lines = client.process.output().split("\n").filter((l) => /also announced/.test(l));
      console.log(
        `FIGURES dns attack: TCP ping-pong through the tunnel while ~65,000-byte answers ` +
          `(4,0xx A records) arrive: idle ${fmt(idle)}; 5 answers for an announced name (edited) ` +
          `${fmt(pq1Rtt)}; 5 for a plain name (same size, not edited) ${fmt(plainRtt)}; the ` +
          `edit costs the tunnel ${delay.toFixed(3)} ms at p99, ${medianDelay.toFixed(3)} ms at ` +
          `the median; the worker's DNS slices: ${st2.dns.slices - slicesBefore}, longest ` +
          `${st2.dns.longestSliceMs.toFixed(3)} ms (wall clock, preemption included), ` +
          `${st2.dns.slicesOver1ms} over 1 ms; log lines about one name's 4,0xx ` +
          `addresses: ${lines.length}`,
      );
      assert.ok(idle.length > 100 && pq1Rtt.length > 20 && plainRtt.length > 20, "too few samples");
      // The target is ≤ 1 ms; on a shared 2-core VM a p99 over a few hundred samples moves by
      // milliseconds with preemption alone, so CI holds the median to the target and the p99 to
      // a margin that does not flake (both printed above).
      assert.ok(
        medianDelay <= 1,
        `the edit delayed the median TCP round trip by ${medianDelay} ms`,
      );
      assert.ok(delay <= 5, `the edit delayed the TCP round trips by ${delay} ms (p99)`);
      assert.ok(lines.length <= 10, `${lines.length} log lines for one name's addresses`);
    } catch (e) {
      failure = e;
    }
    if (Deno.env.get("PQTS_LAB_LOGS")) console.log(allLogs());
    const td = new Teardown();
    await td.attempt("stop client", () => client?.process.stop("SIGTERM", 10_000));
    for (const p of procs) await td.attempt(`stop ${p.name}`, () => p.stop("SIGTERM", 3000));
    await td.attempt("stop dnsmasq", () => dns?.stop());
    await td.attempt("attacker namespace", () => removeNamespace(ATTACKER_NS));
    await td.attempt("destroy lab", () => destroyLab(PREFIX));
    await td.attempt(
      "runtime dir",
      () => Deno.remove(runtimeDir, { recursive: true }).catch(() => {}),
    );
    if (work) await td.attempt("work dir", () => Deno.remove(work!, { recursive: true }));
    await td.attempt("leftovers", async () => assert.deepEqual(await labLeftovers(PREFIX), []));
    td.finish(failure);
  },
});
