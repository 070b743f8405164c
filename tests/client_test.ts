// `pqconnect client` end to end, inside network namespaces with a real DNS server (dnsmasq)
// publishing our own `pqconnect announce` records: against the unmodified reference server
// (Debian 13 pqconnect-server 1.2.2) and against our own server. Checks the first request
// (no TCP retransmission), DNS as applications see it, names without announcement, ping,
// `pqconnect status`, a 20 MiB transfer with checksum, recovery after a server restart, and that
// SIGTERM leaves no interface, queue rule or process behind.
//
// Needs root (namespaces, TUN, NFQUEUE, the reference root at /srv/pqref). Creates user
// `pqconnect` if the machine lacks it.

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  isAlive,
  type Lab,
  labLeftovers,
  type LabProcess,
  notRootReason,
  run,
  sleep,
} from "./lab/netns.ts";
import { dig, type Dnsmasq, mergeZones, startDnsmasq } from "./lab/dnsmasq.ts";
import {
  installServerKeys,
  prepareReferenceRoot,
  type ReferenceProcess,
  releaseReferenceRoot,
  restoreReferenceKeys,
  startReferenceServer,
} from "./lab/reference.ts";
import {
  announceZone,
  BLOB_BYTES,
  cacheDependencies,
  copyFixtureKeys,
  curl,
  type CurlResult,
  denoEnv,
  describeCurl,
  deterministicBytes,
  ensurePrivsepUser,
  HELLO,
  keygen,
  labPermissionProblem,
  logs,
  ms,
  netCounters,
  type OurClient,
  type OurServerOptions,
  ping,
  pqconnectArgv,
  procIds,
  removeStaleTempDirs,
  sha256Hex,
  startHttpServer,
  startOurClient,
  startOurServer,
  startTcpdump,
  statusPermissions,
  strayProcesses,
  Teardown,
  tunDevices,
} from "./helpers/lab_util.ts";

const HTTP_PORT = 8080;
const RETRANS = ["TcpRetransSegs", "TcpExtTCPSynRetrans"];
const skip = notRootReason();
if (skip) console.log(`client_test: skipped, ${skip}`);

interface Peer {
  /** Stops the server (SIGTERM). */
  stop(): Promise<void>;
  log(): string;
}

interface Scenario {
  lab: Lab;
  client: OurClient;
  http: LabProcess;
  url: string;
  tunnelAddr: string;
  work: string;
  allLogs: () => string;
  /** The server as it runs now (the restart replaces it). */
  peer: { current: Peer };
}

interface ScenarioOptions {
  prefix: string;
  label: string;
  ports: { crypto: number; key: number };
  /** Starts the PQConnect server in the lab's server namespace with the keys in `keyDir`. */
  startServer(lab: Lab, keyDir: string): Promise<Peer>;
  /** Fresh clients whose first request is measured (default 1). */
  firstRequestTrials?: number;
  /** What a failed first-request check most likely means with this peer. */
  retransmitHint?: string;
  /** Extra checks while everything runs, before the client is stopped. */
  extra?(s: Scenario): Promise<void>;
  /** Cleanup for what startServer prepared beyond the process. */
  afterServer?(): Promise<void>;
  /** Keys from our own `pqconnect keygen` instead of the reference's fixture files. */
  ourKeygen?: boolean;
}

/** SIGTERM to the client; then no interface, queue rule, runtime directory or process is left. */
async function stopClient(
  client: OurClient,
  clientNs: string,
  runtimeDir: string,
  allLogs: () => string,
): Promise<void> {
  const supPid = client.process.pid;
  const status = await client.process.stop("SIGTERM", 10_000, true);
  assert.equal(status.code, 0, `client exit status ${status.code}\n${allLogs()}`);
  assert.equal(status.signal, null, `client was killed by ${status.signal}`);
  assert.match(client.process.output(), /stopped; interface, queue rule and control socket/);
  assert.deepEqual(await tunDevices(clientNs), [], "TUN device left after SIGTERM");
  const ipt = await run(clientNs, ["iptables-save"]);
  const nft = await run(clientNs, ["nft", "list", "ruleset"]);
  assert.ok(!ipt.stdout.includes("pqconnect-ts"), `iptables rule left:\n${ipt.stdout}`);
  assert.ok(!nft.stdout.includes("pqconnect-ts"), `nftables table left:\n${nft.stdout}`);
  for (const pid of [supPid, client.workerPid]) assert.ok(!isAlive(pid), `pid ${pid} alive`);
  assert.deepEqual(await strayProcesses(clientNs), [], "processes left in the client namespace");
  await assert.rejects(Deno.stat(runtimeDir), Deno.errors.NotFound, `${runtimeDir} left`);
}

/** The checks both peers share; the client is started fresh so the first request is first. */
async function clientScenario(o: ScenarioOptions): Promise<void> {
  const problem = labPermissionProblem("tests/client_test.ts");
  if (problem) throw new Error(problem);
  const t0 = performance.now();
  let lab: Lab | null = null;
  let work: string | null = null;
  let dns: Dnsmasq | null = null;
  const peer: { current: Peer | null } = { current: null };
  let http: LabProcess | null = null;
  let client: OurClient | null = null;
  let syns: LabProcess | null = null;
  let failure: unknown = null;
  const deferred: string[] = [];
  const runtimeDir = `/run/${o.prefix}`;
  const allLogs = (lines = 40) =>
    logs({
      "our client": client?.process.output(),
      server: peer.current?.log(),
      dnsmasq: dns?.log(),
      http: http?.output(),
    }, lines);
  try {
    await cacheDependencies();
    await ensurePrivsepUser();
    lab = await createLab({ prefix: o.prefix });
    const { serverNs, clientNs, serverAddr } = lab;
    // A stale runtime directory of a crashed run would only be reused; start clean anyway.
    await Deno.remove(runtimeDir, { recursive: true }).catch(() => {});
    await removeStaleTempDirs([`${o.prefix}-`]);
    work = await Deno.makeTempDir({ prefix: `${o.prefix}-` });
    // Our keygen's files (so a reference server proves it accepts them unchanged), or the
    // reference's own key files (tests/fixtures); the records come from our `pqconnect announce`.
    const keyDir = `${work}/keys`;
    if (o.ourKeygen) {
      console.log(`client_test ${o.label}: server keys from our keygen: ${await keygen(keyDir)}`);
    } else {
      await Deno.mkdir(keyDir, { mode: 0o700 });
      await copyFixtureKeys(keyDir);
    }
    const announced = await announceZone(keyDir, "www.lab.test", serverAddr, o.ports);
    dns = await startDnsmasq({
      ns: serverNs,
      listen: serverAddr,
      zone: mergeZones(announced.zone, { hosts: [{ name: "plain.lab.test", addr: serverAddr }] }),
    });
    peer.current = await o.startServer(lab, keyDir);
    http = await startHttpServer(serverNs, HTTP_PORT);

    // The first request to a freshly announced server: its SYN must be held until the tunnel
    // is up, not dropped and resent a second later. Each trial is a fresh client (new key
    // download and handshake); with a racy peer one trial would prove little.
    const url = `http://www.lab.test:${HTTP_PORT}/`;
    const trials = o.firstRequestTrials ?? 1;
    const retransmitted: string[] = [];
    let first: CurlResult | null = null;
    for (let trial = 1; trial <= trials; trial++) {
      client = await startOurClient(clientNs, runtimeDir);
      if (trial === 1) {
        const sup = procIds(client.process.pid);
        const wrk = procIds(client.workerPid);
        console.log(
          `client supervisor pid ${client.process.pid} Uid ${sup.uid.join(" ")}; worker pid ` +
            `${client.workerPid} Uid ${wrk.uid.join(" ")} Gid ${wrk.gid.join(" ")} ` +
            `NoNewPrivs ${wrk.noNewPrivs} CapEff ${wrk.capEff}`,
        );
        assert.ok(wrk.uid.every((u) => u !== 0) && wrk.gid.every((g) => g !== 0), "worker root");
        assert.match(wrk.capEff, /^0+$/, "worker keeps capabilities");
      }
      syns = await startTcpdump(clientNs, [
        "-i",
        "pqccli0",
        "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0",
      ]);
      const cBefore = await netCounters(clientNs, RETRANS);
      const sBefore = await netCounters(serverNs, RETRANS);
      first = await curl(clientNs, url, { maxSec: 30 });
      const cAfter = await netCounters(clientNs, RETRANS);
      const sAfter = await netCounters(serverNs, RETRANS);
      await sleep(200);
      await syns.stop("SIGINT", 3000, true);
      const synCount = syns.output().split("\n").filter((l) => /Flags \[S\]/.test(l)).length;
      syns = null;
      assert.equal(first.http, "200", `${allLogs()}\nfirst curl failed: ${describeCurl(first)}`);
      assert.match(first.remoteIp, /^10\.43\./, `not a tunnel address\n${allLogs()}`);
      assert.equal(first.body, HELLO);
      const delta = (a: Record<string, number>, b: Record<string, number>) =>
        RETRANS.map((k) => `${k} +${b[k] - a[k]}`).join(", ");
      console.log(
        `FIGURES client/${o.label}: first request${trials > 1 ? ` (fresh client ${trial})` : ""} ` +
          `${ms(first.seconds)} (SYNs on pqccli0: ${synCount}; client ` +
          `${delta(cBefore, cAfter)}; server ${delta(sBefore, sAfter)}); the reference client ` +
          `needs ~1030 ms here`,
      );
      // How long the tunnel took (key download + handshake). If it was not up well before TCP's
      // 1 s SYN timer fired, the kernel's retransmission is the peer's key server's doing (the
      // reference's Python key server is slow under load), not a lost held packet.
      const upMs = Number(
        [...client.process.output().matchAll(/tunnel [0-9a-f]+ up \((\d+) ms\)/g)].at(-1)?.[1] ??
          0,
      );
      const retransmittedNow = synCount !== 1 || RETRANS.some((k) => cAfter[k] !== cBefore[k]);
      if (retransmittedNow && upMs >= 900) {
        console.log(
          `FIGURES client/${o.label}: fresh client ${trial}: tunnel up after ${upMs} ms, too ` +
            `late for TCP's 1 s SYN timer; not counted as a lost held packet`,
        );
      } else if (retransmittedNow) {
        // The tunnel setup, without the reference server's per-key-request lines.
        const excerpt = (t: string | undefined) =>
          (t ?? "").split("\n").filter((l) =>
            l.trim() && !/Sending|Request received|static key segment|ephemeral key/.test(l)
          ).slice(-12).join("\n");
        retransmitted.push(
          `fresh client ${trial}: ${synCount} SYNs on pqccli0, client ${delta(cBefore, cAfter)}, ` +
            `${ms(first.seconds)}\n--- our client ---\n${excerpt(client.process.output())}\n` +
            `--- server ---\n${excerpt(peer.current.log())}`,
        );
      }
      if (trial < trials) {
        await stopClient(client, clientNs, runtimeDir, allLogs);
        client = null;
      }
    }
    // Checked after everything else ran, so one finding does not hide the others.
    if (retransmitted.length) {
      deferred.push(
        `${retransmitted.length} of ${trials} first requests to ${o.label} were retransmitted: ` +
          `the held SYN went out with the handshake but did not reach the HTTP server.` +
          `${o.retransmitHint ?? ""}\n${retransmitted.join("\n")}`,
      );
    }
    if (!client || !first) throw new Error("no client running after the first-request trials");

    const later: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await curl(clientNs, `${url}again`);
      assert.equal(r.http, "200", `later curl: ${describeCurl(r)}\n${allLogs()}`);
      later.push(r.seconds);
    }
    const reqs = http.output().split("\n").filter((l) => l.startsWith("REQ "));
    assert.ok(
      reqs.length >= 6 && reqs.every((l) => /^REQ 10\.42\.\d+\.\d+ \//.test(l)),
      `requests did not arrive through the tunnel:\n${reqs.join("\n")}\n${allLogs()}`,
    );

    // DNS as applications see it: the announced name maps to an internal address, TTL 0.
    const www = await dig(clientNs, "www.lab.test");
    const wwwA = www.answers.filter((a) => a.type === "A");
    assert.ok(wwwA.length > 0, `no A record for www.lab.test:\n${www.raw}`);
    for (const a of wwwA) {
      assert.match(a.data, /^10\.43\./, www.raw);
      assert.equal(a.ttl, 0, www.raw);
    }
    const tunnelAddr = wwwA[0].data;
    assert.equal(tunnelAddr, first.remoteIp);
    console.log(`dig www.lab.test: ${wwwA.map((a) => `${a.name} ${a.ttl} A ${a.data}`)}`);

    // A name without the announcement resolves to, and reaches, the real address.
    const plain = await dig(clientNs, "plain.lab.test");
    assert.deepEqual(plain.answers.map((a) => a.data), [serverAddr], plain.raw);
    const before = http.output().length;
    const direct = await curl(clientNs, `http://plain.lab.test:${HTTP_PORT}/plain`);
    assert.equal(direct.http, "200", describeCurl(direct));
    assert.equal(direct.remoteIp, serverAddr);
    await http.waitFor(`REQ ${lab.clientAddr} /plain`, 5000, before);

    const pTunnel = await ping(clientNs, tunnelAddr);
    const pPlain = await ping(clientNs, serverAddr);
    assert.equal(pTunnel.received, pTunnel.sent, "ping through the tunnel lost packets");
    console.log(
      `FIGURES client/${o.label}: later requests ${later.map((s) => ms(s)).join(", ")}; ` +
        `ping avg ${pTunnel.avg.toFixed(3)} ms through the tunnel (${tunnelAddr}) vs ` +
        `${pPlain.avg.toFixed(3)} ms plain veth`,
    );

    // `pqconnect status` in the client namespace lists the server with its internal address.
    const st = await run(
      clientNs,
      pqconnectArgv(statusPermissions(runtimeDir), ["status", "--runtime-dir", runtimeDir]),
      { check: false, env: denoEnv() },
    );
    console.log(`pqconnect status:\n${st.stdout.trimEnd()}`);
    assert.equal(st.code, 0, `pqconnect status failed: ${st.stderr}`);
    const row = st.stdout.split("\n").find((l) => l.split(/\s+/).includes(tunnelAddr));
    assert.ok(row, `status does not list ${tunnelAddr}`);
    const cols = row.trim().split(/\s+/);
    assert.ok(cols[0].startsWith(announced.pq1Name), `status row names ${cols[0]}`);
    assert.equal(cols[1], serverAddr);
    assert.equal(cols[3], "up");
    const [sent, received] = cols.slice(-2).map(Number);
    assert.ok(sent > 0 && received > 0, `status shows ${sent} bytes sent, ${received} received`);

    await o.extra?.({
      lab,
      client,
      http,
      url,
      tunnelAddr,
      work,
      allLogs,
      peer: peer as { current: Peer },
    });

    // SIGTERM: the interface, the queue rule, the runtime directory and both processes go.
    await stopClient(client, clientNs, runtimeDir, allLogs);
  } catch (e) {
    failure = e;
  }
  // PQTS_LAB_LOGS=1 prints every daemon's log, for debugging a CI run.
  if (Deno.env.get("PQTS_LAB_LOGS")) console.log(allLogs(100_000));
  const td = new Teardown();
  await td.attempt("stop tcpdump", () => syns?.stop("SIGINT", 2000));
  await td.attempt("stop client", () => client?.process.stop("SIGTERM", 10_000));
  await td.attempt("stop server", () => peer.current?.stop());
  if (o.afterServer) await td.attempt("server cleanup", o.afterServer);
  await td.attempt("stop http", () => http?.stop());
  await td.attempt("stop dnsmasq", () => dns?.stop());
  await td.attempt("destroy lab", () => destroyLab(o.prefix));
  await td.attempt(
    "runtime dir",
    () => Deno.remove(runtimeDir, { recursive: true }).catch(() => {}),
  );
  if (work) await td.attempt("remove work dir", () => Deno.remove(work!, { recursive: true }));
  await td.attempt("lab leftovers", async () => assert.deepEqual(await labLeftovers(o.prefix), []));
  console.log(`client_test ${o.label}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (!failure && deferred.length) failure = new Error(deferred.join("\n\n"));
  td.finish(failure);
}

Deno.test({
  name: "client: our client against the reference server (running on keys from our keygen)",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let refRoot = false;
    await clientScenario({
      prefix: "pqts-cliref",
      label: "reference-server",
      // The reference server runs on keys from our keygen: it must accept them unchanged.
      ourKeygen: true,
      // Not the defaults: our client must take them from the pq1 name.
      ports: { crypto: 42432, key: 42433 },
      // Whether the reference server loses the first SYN is a race: give it three chances.
      firstRequestTrials: 3,
      retransmitHint: " The reference server knows a tunnel only once a handshake thread " +
        "has finished (pqconnect/pqcserver.py PQCServerHS, one thread per live ephemeral key) " +
        "and drops packets for unknown tunnel ids meanwhile (pqconnect/tundevice.py), so " +
        "0-RTT data sent right behind the initiation is lost; the client has to send its held " +
        "packets again shortly afterwards (or until the server answers) rather than only once.",
      async startServer(lab, keyDir) {
        await prepareReferenceRoot();
        refRoot = true;
        await installServerKeys(keyDir);
        const ref: ReferenceProcess = await startReferenceServer(lab.serverNs, {
          hostIp: lab.serverAddr,
          port: 42432,
          keyPort: 42433,
        });
        return { stop: () => ref.stop(), log: () => ref.log() };
      },
      async afterServer() {
        if (!refRoot) return;
        try {
          await restoreReferenceKeys();
        } finally {
          await releaseReferenceRoot();
        }
      },
    });
  },
});

Deno.test({
  name: "client: our client against our server (20 MiB transfer, server restart)",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let serverOpts: OurServerOptions | null = null;
    const ourPeer = (p: LabProcess): Peer => ({
      stop: async () => void await p.stop("SIGTERM", 10_000),
      log: () => p.output(),
    });
    let current: LabProcess | null = null;
    await clientScenario({
      prefix: "pqts-cliown",
      label: "our-server",
      ports: { crypto: 42424, key: 42425 },
      async startServer(lab, keyDir) {
        serverOpts = { keyDir, port: 42424, keyPort: 42425, hostIp: lab.serverAddr };
        current = await startOurServer(lab.serverNs, serverOpts);
        return ourPeer(current);
      },
      async extra(s) {
        const { clientNs, serverNs, serverAddr } = s.lab;
        // 20 MiB of known pseudo-random bytes through the tunnel, checked byte for byte.
        const expected = await sha256Hex(deterministicBytes(BLOB_BYTES));
        const file = `${s.work}/blob`;
        const big = await curl(clientNs, `${s.url}blob`, { maxSec: 120, outFile: file });
        assert.equal(big.http, "200", `20 MiB transfer: ${describeCurl(big)}\n${s.allLogs()}`);
        assert.match(big.remoteIp, /^10\.43\./);
        const got = await Deno.readFile(file);
        assert.equal(got.length, BLOB_BYTES, "20 MiB transfer has the wrong length");
        assert.equal(await sha256Hex(got), expected, "20 MiB transfer: checksum mismatch");
        await Deno.remove(file);
        const plainBig = await curl(clientNs, `http://${serverAddr}:${HTTP_PORT}/blob`, {
          maxSec: 60,
          outFile: "/dev/null",
        });
        const mbit = (c: CurlResult) => (c.bytes * 8 / c.seconds / 1e6).toFixed(1);
        console.log(
          `FIGURES client/our-server: 20 MiB (sha256 ${expected.slice(0, 16)}… matches) in ` +
            `${big.seconds.toFixed(2)} s = ${mbit(big)} Mbit/s through the tunnel; plain veth ` +
            `${plainBig.seconds.toFixed(3)} s = ${mbit(plainBig)} Mbit/s`,
        );

        // An application keeps requesting every 0.5 s while the server restarts.
        const results: { start: number; end: number; ok: boolean; why: string }[] = [];
        let app = true;
        const loop = (async () => {
          while (app) {
            const start = performance.now();
            const r = await curl(clientNs, `${s.url}app`, { maxSec: 3 });
            results.push({ start, end: performance.now(), ok: r.http === "200", why: r.stderr });
            const wait = 500 - (performance.now() - start);
            if (wait > 0) await sleep(wait);
          }
        })();
        try {
          await sleep(1500);
          assert.ok(results.some((r) => r.ok), `the application failed before the restart`);
          const old = current!;
          const tStop = performance.now();
          await old.stop("SIGTERM", 10_000, true);
          assert.deepEqual(await tunDevices(serverNs), [], "server TUN left after SIGTERM");
          current = await startOurServer(serverNs, serverOpts!);
          s.peer.current = ourPeer(current);
          const tUp = performance.now();
          let back: { start: number; end: number } | undefined;
          while (!back && performance.now() - tUp < 15_000) {
            back = results.find((r) => r.ok && r.start > tStop);
            if (!back) await sleep(100);
          }
          const failures = results.filter((r) => !r.ok && r.start > tStop);
          const failed = failures.length;
          assert.ok(
            back && back.end - tUp <= 10_000,
            `requests did not recover within 10 s of the server restart (${failed} failed: ` +
              `${[...new Set(failures.map((r) => r.why))].join("; ")})\n${s.allLogs()}`,
          );
          console.log(
            `FIGURES client/our-server: server restart took ${((tUp - tStop) / 1000).toFixed(2)} ` +
              `s (SIGTERM to serving again); the application's requests succeeded again ` +
              `${((back.end - tUp) / 1000).toFixed(2)} s after the new server was up ` +
              `(${
                ((back.end - tStop) / 1000).toFixed(2)
              } s after SIGTERM; ${failed} requests failed)`,
          );
        } finally {
          app = false;
          await loop;
        }
        const after = await curl(clientNs, `${s.url}after-restart`);
        assert.equal(after.http, "200", describeCurl(after));
      },
    });
  },
});
