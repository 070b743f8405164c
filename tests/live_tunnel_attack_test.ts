// Issue 8: an on-path attacker against a live tunnel, as root, in three namespaces. The attacker's
// namespace is the link between client and server (a bridge over two veth pairs), so it sees every
// datagram and learns the live tunnel id, the client's port and the counters in use
// (tests/helpers/tunnel_attacker.ts). While an application runs through the tunnel (echo
// requests, then a TCP transfer) it replays recorded client datagrams to the server, from the
// client's own address and port and from its own; forges datagrams with the live tid at the edge
// of the server's receive window, in next epochs and at random; and does the same to the client
// in the server's name. Each kind at a bounded rate, for a few seconds.
//
// What must hold: the application keeps working (figures against a no-attack baseline of the
// same run), every attack datagram is a counted drop at its receiver, nothing goes to the
// attacker and nothing more than the application's own traffic comes back (no amplification),
// the tunnel is neither torn down nor replaced, and the server's memory stays bounded (its CPU
// during the attack is printed). Bounded: ≤ 25,000 datagrams of each kind, ~6 s of attack.

import assert from "node:assert/strict";
import { type LabProcess, notRootReason, run, sleep, spawn } from "./lab/netns.ts";
import {
  cacheDependencies,
  denoEnv,
  dropTotals,
  iperfMbit,
  logs,
  PROJECT_DIR,
  tunnelTarget,
} from "./helpers/lab_util.ts";
import { TunnelLab } from "./helpers/tunnel_lab.ts";
import {
  CLIENT_PORT_IF,
  interposeAttacker,
  removeAttacker,
  SERVER_PORT_IF,
} from "./helpers/attacker_ns.ts";
import { libcPath } from "../ffi/libc.ts";

const PREFIX = "pqts-lta";
const ATTACKER_NS = `${PREFIX}-atk`;
const ATTACKER_ADDR = "198.18.0.3";
const PORT = 42424;
const ATTACKER = `${PROJECT_DIR}/tests/helpers/tunnel_attacker.ts`;
/** Datagrams per second of each kind while attacking, and the most of each in all. */
const RATES = {
  "replay-spoofed": 4000,
  "replay-own": 2000,
  "forge-edge": 4000,
  "forge-random": 2000,
  "to-client": 4000,
};
const MAX_PER_KIND = 25_000;
const skip = notRootReason();
if (skip) console.log(`live_tunnel_attack_test: skipped, ${skip}`);

interface Echoes {
  sent: number;
  received: number;
  avgMs: number;
  maxMs: number;
}

/** Echo requests through the tunnel, 200 a second for `seconds`. */
async function echoes(ns: string, target: string, seconds: number): Promise<Echoes> {
  const count = seconds * 200;
  const r = await run(ns, [
    "ping",
    "-n",
    "-q",
    "-i",
    "0.005",
    "-c",
    String(count),
    "-W",
    "1",
    target,
  ], { check: false, timeoutMs: (seconds + 10) * 1000 });
  const m = r.stdout.match(/(\d+) packets transmitted, (\d+) received/);
  const t = r.stdout.match(/= [\d.]+\/([\d.]+)\/([\d.]+)\//);
  if (!m) throw new Error(`ping gave no summary: ${r.stdout}${r.stderr}`);
  return {
    sent: Number(m[1]),
    received: Number(m[2]),
    avgMs: t ? Number(t[1]) : Infinity,
    maxMs: t ? Number(t[2]) : Infinity,
  };
}

/**
 * The application: echo requests, then a TCP transfer. The attacker counts the wire in each
 * stretch apart (`label`-echo, `label`-tcp): echo requests and replies pair up one to one.
 */
async function application(ns: string, target: string, label: string, control: string) {
  await Deno.writeTextFile(control, `${label}-echo`);
  await sleep(50);
  const echo = await echoes(ns, target, 2);
  await Deno.writeTextFile(control, `${label}-tcp`);
  await sleep(50);
  const mbit = await iperfMbit(ns, target, 2);
  return { echo, mbit };
}

/** CPU seconds of a process (all its threads), and its resident memory (KiB). */
function usage(pid: number): { cpu: number; rssKiB: number } {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return {
    cpu: (Number(f[11]) + Number(f[12])) / 100, // utime, stime: clock ticks of 1/100 s
    rssKiB: Number(status.match(/^VmRSS:\s+(\d+) kB/m)?.[1] ?? 0),
  };
}

/** Samples the resident memory of `pid` into `into` every second until stopped. */
function rssSampler(pid: number, into: number[]): { stop: () => Promise<void> } {
  let running = true;
  const done = (async () => {
    while (running) {
      await sleep(1000);
      if (running) into.push(usage(pid).rssKiB);
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      into.push(usage(pid).rssKiB);
    },
  };
}

/** The kernel's UDP drops in `ns` before any daemon sees a datagram: full receive buffers,
 * bad checksums. */
async function kernelUdpDrops(ns: string): Promise<{ buffer: number; checksum: number }> {
  const snmp = (await run(ns, ["cat", "/proc/net/snmp"])).stdout.split("\n");
  const [names, values] = snmp.filter((l) => l.startsWith("Udp:")).map((l) => l.split(/\s+/));
  const get = (name: string) => Number(values[names.indexOf(name)]);
  return { buffer: get("RcvbufErrors"), checksum: get("InCsumErrors") };
}

const tunnelDrops = (d: Record<string, number>) =>
  Object.entries(d).filter(([k]) => k.startsWith("tunnel-")).reduce((s, [, n]) => s + n, 0);

interface Seen {
  clientTunnel: number;
  clientOther: number;
  serverToClient: number;
  serverToClientOther: number;
  serverToElsewhere: number;
  clientToElsewhere: number;
}

interface AttackResult {
  tids: string[];
  clientPort: number;
  attackSeconds: number;
  sent: Record<keyof typeof RATES, number>;
  sendFailures: number;
  seen: Record<string, Seen>;
}

Deno.test({
  name:
    "an on-path attacker replays and forges live-tunnel datagrams: dropped, counted, unanswered",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    let t: TunnelLab | null = null;
    let attacker: LabProcess | null = null;
    let failure: unknown = null;
    const started = performance.now();
    try {
      await cacheDependencies();
      await run(null, [Deno.execPath(), "cache", `--config=${PROJECT_DIR}/deno.json`, ATTACKER], {
        env: denoEnv(),
        timeoutMs: 120_000,
      });
      t = await TunnelLab.start(PREFIX, {
        prepare: (lab) => interposeAttacker(lab, ATTACKER_NS, ATTACKER_ADDR),
        http: false,
        iperf: true,
      });
      const { lab, work } = t;
      const server = t.server!;
      const client = t.client!;
      const control = `${work}/attack`;
      const target = await tunnelTarget(lab.clientNs, "www.lab.test");

      attacker = spawn(ATTACKER_NS, [
        Deno.execPath(),
        "run",
        "--no-prompt",
        `--config=${PROJECT_DIR}/deno.json`,
        `--allow-ffi=${libcPath()}`,
        `--allow-read=${control}`,
        ATTACKER,
        "--config",
        JSON.stringify({
          client: lab.clientAddr,
          server: lab.serverAddr,
          attacker: ATTACKER_ADDR,
          port: PORT,
          cliIf: CLIENT_PORT_IF,
          srvIf: SERVER_PORT_IF,
          control,
          rates: RATES,
          maxPerKind: MAX_PER_KIND,
        }),
      ], { name: `attacker@${ATTACKER_NS}`, env: denoEnv() });
      await attacker.waitFor("tapping", 30_000);

      // The baseline, while the attacker records.
      const pid = server.pid;
      const calmFrom = { server: usage(pid), at: performance.now() };
      const calmRss = [calmFrom.server.rssKiB];
      const calmSampler = rssSampler(pid, calmRss);
      const calm = await application(lab.clientNs, target, "calm", control);
      await calmSampler.stop();
      const calmCpu = (usage(pid).cpu - calmFrom.server.cpu) /
        ((performance.now() - calmFrom.at) / 1000);
      const upLines = (text: string) => (text.match(/ tunnel \w+ up /g) ?? []).length;
      const before = {
        server: usage(pid),
        client: usage(client.workerPid),
        kernelServer: await kernelUdpDrops(lab.serverNs),
        kernelClient: await kernelUdpDrops(lab.clientNs),
        serverUps: upLines(server.output()),
        clientUps: upLines(client.process.output()),
        at: performance.now(),
      };
      await Deno.writeTextFile(control, "attack-start");
      await attacker.waitFor("ATTACKING", 10_000);
      await sleep(500); // the attack is under way before the application starts again
      const rss = [before.server.rssKiB];
      const sampler = rssSampler(pid, rss);
      const attacked = await application(lab.clientNs, target, "attack", control);
      const after = { server: usage(pid), client: usage(client.workerPid), at: performance.now() };
      await sampler.stop();
      await Deno.writeTextFile(control, "settle");
      await attacker.waitFor("SETTLING", 10_000);
      await sleep(1000); // an answer to the last injected datagrams would be out by now
      await Deno.writeTextFile(control, "stop");
      await attacker.status;
      const line = attacker.output().split("\n").find((l) => l.startsWith("RESULT "));
      assert.ok(line, `the attacker reported nothing:\n${attacker.output()}`);
      const result: AttackResult = JSON.parse(line.slice(7));
      const since = async (ns: string, then: { buffer: number; checksum: number }) => {
        const now = await kernelUdpDrops(ns);
        return { buffer: now.buffer - then.buffer, checksum: now.checksum - then.checksum };
      };
      const kernel = {
        server: await since(lab.serverNs, before.kernelServer),
        client: await since(lab.clientNs, before.kernelClient),
      };
      const serverUps = upLines(server.output()) - before.serverUps;
      const clientUps = upLines(client.process.output()) - before.clientUps;
      const closed = server.output().match(/ closed: .*/g) ?? [];
      // Both daemons report their drop counters as they stop.
      await client.process.stop("SIGTERM", 10_000);
      await server.stop("SIGTERM", 10_000);
      const serverDrops = dropTotals(server.output());
      const clientDrops = dropTotals(client.process.output());

      const s = result.sent;
      const toServer = s["replay-spoofed"] + s["replay-own"] + s["forge-edge"] +
        s["forge-random"];
      const toClient = s["to-client"];
      const seconds = (after.at - before.at) / 1000;
      const cpu = (after.server.cpu - before.server.cpu) / seconds;
      const clientCpu = (after.client.cpu - before.client.cpu) / seconds;
      const mib = (k: number) => (k / 1024).toFixed(1);
      const ratio = (a: number, b: number) => (b > 0 ? a / b : Infinity).toFixed(2);
      const wire = result.seen;
      console.log(
        `FIGURES live-tunnel attack: ${toServer} datagrams to the server and ${toClient} to the ` +
          `client in ${result.attackSeconds.toFixed(1)} s (${JSON.stringify(s)}, ` +
          `${result.sendFailures} not sent); tunnel ids seen ${result.tids.length}\n` +
          `  echoes calm ${calm.echo.received}/${calm.echo.sent} avg ` +
          `${calm.echo.avgMs.toFixed(2)} ms max ${calm.echo.maxMs.toFixed(1)} ms; attacked ` +
          `${attacked.echo.received}/${attacked.echo.sent} avg ${
            attacked.echo.avgMs.toFixed(2)
          } ms max ${attacked.echo.maxMs.toFixed(1)} ms (avg ×${
            ratio(attacked.echo.avgMs, calm.echo.avgMs)
          })\n` +
          `  TCP calm ${calm.mbit.toFixed(0)} Mbit/s, attacked ${attacked.mbit.toFixed(0)} ` +
          `Mbit/s (×${ratio(attacked.mbit, calm.mbit)})\n` +
          `  CPU during the attack (with the application's traffic): server ${
            (cpu * 100).toFixed(0)
          } % (calm: ${(calmCpu * 100).toFixed(0)} %), client ${
            (clientCpu * 100).toFixed(0)
          } % of a core; server RSS ` +
          `${rss.map(mib).join(" → ")} MiB (calm: ${calmRss.map(mib).join(" → ")})\n` +
          `  wire: ${JSON.stringify(wire)}\n` +
          `  server drops ${JSON.stringify(serverDrops)}; kernel UDP drops ` +
          `${JSON.stringify(kernel.server)}\n  client drops ${JSON.stringify(clientDrops)}; ` +
          `kernel UDP drops ${
            JSON.stringify(kernel.client)
          }\n  tunnels up during the attack: server ${serverUps}, client ` +
          `${clientUps}; whole test ${((performance.now() - started) / 1000).toFixed(0)} s`,
      );

      // The attack happened as planned.
      assert.equal(result.tids.length, 1, "one tunnel id on the wire from start to end");
      for (const [kind, rate] of Object.entries(RATES)) {
        const want = Math.min(MAX_PER_KIND, rate * result.attackSeconds);
        const got = s[kind as keyof typeof RATES];
        assert.ok(got >= 0.9 * want, `${kind}: only ${got} of ${want} sent`);
      }
      // The application kept working, within bounds of its calm figures.
      assert.ok(attacked.echo.received >= 0.95 * attacked.echo.sent, "echoes lost to the attack");
      assert.ok(
        attacked.echo.avgMs <= Math.max(10 * calm.echo.avgMs, calm.echo.avgMs + 20),
        "echo round trips slowed down beyond the bound",
      );
      assert.ok(attacked.mbit >= 0.3 * calm.mbit, "TCP through the tunnel collapsed");
      // No session torn down, replaced or moved.
      assert.equal(serverUps, 0, "the server made a tunnel during the attack");
      assert.equal(clientUps, 0, "the client made a tunnel during the attack");
      assert.deepEqual(closed, [], "the server closed a tunnel");
      // Nothing to the attacker, and no datagram in answer to an attack datagram: while the
      // echoes run, each side's tunnel datagrams are the echo requests and replies, one to one.
      for (const [label, w] of Object.entries(wire)) {
        assert.equal(w.serverToElsewhere, 0, `${label}: the server sent to another address`);
        assert.equal(w.clientToElsewhere, 0, `${label}: the client sent to another address`);
      }
      const e = wire["attack-echo"];
      assert.ok(e, "the attacker saw no echo stretch");
      const slack = (n: number) => n * 1.02 + 20;
      assert.ok(
        e.clientTunnel <= slack(attacked.echo.sent),
        `the client sent ${e.clientTunnel} datagrams for ${attacked.echo.sent} echo requests`,
      );
      assert.ok(
        e.serverToClient <= slack(e.clientTunnel),
        `the server sent ${e.serverToClient} datagrams for the client's ${e.clientTunnel}`,
      );
      const quiet = wire["settle"] ?? { clientTunnel: 0, serverToClient: 0 };
      assert.ok(
        quiet.clientTunnel <= 20 && quiet.serverToClient <= 20,
        `after the attack, with no application traffic: ${JSON.stringify(quiet)}`,
      );
      // Every attack datagram reached the daemons (a bad checksum would have made the kernel
      // drop it unseen), except what overflowed a receive buffer, and each is a counted drop.
      assert.equal(kernel.server.checksum + kernel.client.checksum, 0, "malformed injections");
      const serverCounted = tunnelDrops(serverDrops);
      assert.ok(
        serverCounted >= toServer - kernel.server.buffer,
        `server: ${serverCounted} counted drops for ${toServer} attack datagrams`,
      );
      assert.ok(serverCounted <= toServer + 100, "server: drops beyond the attack's");
      const clientCounted = tunnelDrops(clientDrops);
      assert.ok(
        clientCounted >= toClient - kernel.client.buffer,
        `client: ${clientCounted} counted drops for ${toClient} attack datagrams`,
      );
      assert.ok(clientCounted <= toClient + 100, "client: drops beyond the attack's");
      // Memory: bounded growth under ~50,000 refused datagrams.
      assert.ok(
        Math.max(...rss) - rss[0] <= 48 * 1024,
        `server memory grew during the attack: ${rss.map(mib).join(" → ")} MiB`,
      );
    } catch (e) {
      failure = e;
      if (t) console.error(logs({ attacker: attacker?.output() }, 60), t.logs(60));
    }
    try {
      if (attacker?.running) await attacker.stop("SIGKILL", 3000);
      if (t) await t.stop(failure);
      else if (failure) throw failure;
    } finally {
      await removeAttacker(ATTACKER_NS);
    }
  },
});
