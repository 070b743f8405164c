// `pqconnect server` end to end, inside network namespaces: the unmodified reference client
// (Debian 13 pqconnect 1.2.2) finds our server through a real DNS server that publishes our own
// `pqconnect announce` records, fetches a page, pings through the tunnel; the server survives a
// flood of malformed datagrams on both ports and leaves nothing behind after SIGTERM. A second
// test checks that bad options and bad key files fail early, clearly and without leftovers.
//
// Needs root (namespaces, TUN, the reference root at /srv/pqref). Creates user `pqconnect` if
// the machine lacks it.

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
} from "./lab/netns.ts";
import { dig, type Dnsmasq, mergeZones, startDnsmasq } from "./lab/dnsmasq.ts";
import {
  clientNetfilterLeftovers,
  prepareReferenceRoot,
  type ReferenceProcess,
  releaseReferenceRoot,
  startReferenceClient,
} from "./lab/reference.ts";
import {
  announceZone,
  cacheDependencies,
  cmdline,
  copyFixtureKeys,
  curl,
  denoEnv,
  describeCurl,
  dropTotals,
  ensurePrivsepUser,
  type FuzzPlan,
  HELLO,
  holdUdpPort,
  keygen,
  labPermissionProblem,
  logs,
  MAIN_TS,
  ms,
  ourServerArgv,
  ping,
  procIds,
  removeStaleTempDirs,
  runFuzzer,
  serverPermissions,
  startHttpServer,
  startOurServer,
  startTcpdump,
  strayProcesses,
  Teardown,
  tunDevices,
  udpPayloadsFromHexDump,
} from "./helpers/lab_util.ts";
import { KeyTree } from "../lib/core/keytree.ts";
import { staticKeyRequest, staticKeyResponse } from "../lib/core/keymsg.ts";
import { hex } from "../lib/core/bytes.ts";
import { HANDSHAKE_BYTES, MSG_INITIATION, MSG_TUNNEL } from "../lib/core/constants.ts";

const PREFIX = "pqts-srv";
const BAD_PREFIX = "pqts-srvbad";
const HTTP_PORT = 8080;
// Not the defaults: the reference client must take them from the pq1 name we announce.
const CRYPTO_PORT = 42430;
const KEY_PORT = 42431;

const skip = notRootReason();
if (skip) console.log(`server_test: skipped, ${skip}`);

Deno.test({
  name: "server: reference client reaches an HTTP server behind our server; fuzzing; clean exit",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const problem = labPermissionProblem("tests/server_test.ts");
    if (problem) throw new Error(problem);
    const t0 = performance.now();
    let lab: Lab | null = null;
    let keyDir: string | null = null;
    let work: string | null = null;
    let dns: Dnsmasq | null = null;
    let server: LabProcess | null = null;
    let http: LabProcess | null = null;
    let capture: LabProcess | null = null;
    let client: ReferenceProcess | null = null;
    let refRoot = false;
    let failure: unknown = null;
    const allLogs = () =>
      logs({
        "our server": server?.output(),
        "reference client": client?.log(),
        dnsmasq: dns?.log(),
        http: http?.output(),
      });
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      const { serverNs, clientNs, serverAddr } = lab;
      await removeStaleTempDirs(["pqts-srv-keys-", "pqts-srv-work-"]);
      keyDir = await Deno.makeTempDir({ prefix: "pqts-srv-keys-" });
      const label = await keygen(keyDir);
      const announced = await announceZone(keyDir, "www.lab.test", serverAddr, {
        crypto: CRYPTO_PORT,
        key: KEY_PORT,
      });
      assert.ok(announced.pq1Name.startsWith(label), `${announced.pq1Name} is not ${label}+ports`);
      console.log(`announcement (pqconnect announce):\n  ${announced.records.join("\n  ")}`);
      dns = await startDnsmasq({
        ns: serverNs,
        listen: serverAddr,
        zone: mergeZones(announced.zone, { hosts: [{ name: "plain.lab.test", addr: serverAddr }] }),
      });

      const serverOpts = { keyDir, port: CRYPTO_PORT, keyPort: KEY_PORT, hostIp: serverAddr };
      console.log(`server command: ${ourServerArgv(serverOpts).join(" ")}`);
      server = await startOurServer(serverNs, serverOpts);
      assert.deepEqual(await tunDevices(serverNs), ["pqcserv0"], "no TUN device while serving");

      // The process that reads datagrams runs unprivileged: every uid and gid non-zero, no
      // capabilities, no way back through exec.
      const ids = procIds(server.pid);
      console.log(
        `server pid ${server.pid}: Uid ${ids.uid.join(" ")}, Gid ${ids.gid.join(" ")}, ` +
          `Groups ${ids.groups.join(" ")}, NoNewPrivs ${ids.noNewPrivs}, CapEff ${ids.capEff}`,
      );
      assert.equal(ids.uid.length, 4);
      assert.ok(ids.uid.every((u) => u !== 0), `server runs with uids ${ids.uid}`);
      assert.ok(ids.gid.every((g) => g !== 0), `server runs with gids ${ids.gid}`);
      assert.ok(!ids.groups.includes(0), `server keeps group 0: ${ids.groups}`);
      assert.equal(ids.noNewPrivs, 1, "NoNewPrivs is not set");
      assert.match(ids.capEff, /^0+$/, `server keeps capabilities ${ids.capEff}`);
      assert.match(cmdline(server.pid), /main\.ts server/, "the pid is not our server");

      http = await startHttpServer(serverNs, HTTP_PORT);
      // The client's first handshake and tunnel packets, for the replay part of the fuzzing.
      capture = await startTcpdump(serverNs, [
        "-i",
        lab.serverIf,
        "-x",
        "-s",
        "0",
        `udp and dst port ${CRYPTO_PORT}`,
      ]);

      await prepareReferenceRoot();
      refRoot = true;
      client = await startReferenceClient(clientNs, { dnsServer: lab.dnsServer });

      // First request: DNS rewrite, key download (937 packets from our key server), handshake.
      const url = `http://www.lab.test:${HTTP_PORT}/`;
      const first = await curl(clientNs, url, { maxSec: 30 });
      assert.equal(first.http, "200", `${allLogs()}\nfirst curl failed: ${describeCurl(first)}`);
      assert.match(first.remoteIp, /^10\.43\./, `curl did not use a tunnel address\n${allLogs()}`);
      assert.equal(first.body, HELLO);
      const later: number[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await curl(clientNs, `${url}again`);
        assert.equal(r.http, "200", `${allLogs()}\nlater curl failed: ${describeCurl(r)}`);
        later.push(r.seconds);
      }
      const reqs = http.output().split("\n").filter((l) => l.startsWith("REQ "));
      assert.ok(
        reqs.length >= 6 && reqs.every((l) => /^REQ 10\.42\.\d+\.\d+ \//.test(l)),
        `requests did not arrive through the tunnel:\n${reqs.join("\n")}\n${allLogs()}`,
      );
      assert.match(server.output(), /tunnel [0-9a-f]{12} up with 198\.18\.0\.2:\d+/);

      const www = await dig(clientNs, "www.lab.test");
      const tunnelAddr = www.answers.find((a) => a.type === "A")?.data ?? "";
      assert.match(tunnelAddr, /^10\.43\./, www.raw);

      // A name without the announcement goes straight to the same machine.
      const plain = await dig(clientNs, "plain.lab.test");
      assert.deepEqual(plain.answers.map((a) => a.data), [serverAddr], plain.raw);
      const before = http.output().length;
      const direct = await curl(clientNs, `http://plain.lab.test:${HTTP_PORT}/plain`);
      assert.equal(direct.http, "200", describeCurl(direct));
      assert.equal(direct.remoteIp, serverAddr);
      await http.waitFor(`REQ ${lab.clientAddr} /plain`, 5000, before);

      const pTunnel = await ping(clientNs, tunnelAddr);
      const pPlain = await ping(clientNs, serverAddr);
      assert.equal(pTunnel.received, pTunnel.sent, `ping through the tunnel lost packets`);
      console.log(
        `FIGURES server/reference-client: first request ${ms(first.seconds)} ` +
          `(reference client: key download + handshake), later requests ` +
          `${later.map((s) => ms(s)).join(", ")}; ping avg ${pTunnel.avg.toFixed(3)} ms ` +
          `through the tunnel (${tunnelAddr}) vs ${pPlain.avg.toFixed(3)} ms plain veth`,
      );

      await capture.stop("SIGINT", 3000, true);
      const captured = udpPayloadsFromHexDump(capture.output());
      const handshake = captured.find((p) =>
        p.length === HANDSHAKE_BYTES && (p[0] << 8 | p[1]) === MSG_INITIATION
      );
      const tunnel = captured.filter((p) => (p[0] << 8 | p[1]) === MSG_TUNNEL).slice(0, 20);
      assert.ok(handshake, `no handshake captured (${captured.length} datagrams)`);
      assert.ok(tunnel.length > 0, "no tunnel packets captured");

      // Key requests whose exact answers we know from the key files.
      const tree = KeyTree.build(
        await Deno.readFile(`${keyDir}/mceliece_pk`),
        await Deno.readFile(`${keyDir}/x25519_pk`),
      );
      const probes = [[0, 0], [1, 0], [2, 25], [3, 0], [3, 909]].map(([d, p]) => ({
        label: `static key request (${d}, ${p})`,
        request: hex(staticKeyRequest(d, p)),
        response: hex(staticKeyResponse(d, p, tree.node(d, p)!)),
      }));
      const plan: FuzzPlan = {
        host: serverAddr,
        keyPort: KEY_PORT,
        cryptoPort: CRYPTO_PORT,
        probes,
        handshake: hex(handshake),
        tunnel: tunnel.map(hex),
        seed: 0x5eed1234,
      };
      const tf = performance.now();
      work = await Deno.makeTempDir({ prefix: "pqts-srv-work-" });
      const report = await runFuzzer(clientNs, plan, work);
      const fuzzSecs = (performance.now() - tf) / 1000;
      console.log(
        `fuzzing: ${report.sent} datagrams in ${fuzzSecs.toFixed(1)} s ` +
          `(${report.sendErrors} not sent by the kernel); per category ` +
          JSON.stringify(report.byCategory) + `; key-port answers ` +
          JSON.stringify(report.keyAnswers) + `; crypto-port answers ${report.cryptoAnswers}`,
      );
      console.log(`probes before: ${report.probesBefore.join("; ")}`);
      console.log(
        `probes after: ${report.probesAfter.join("; ")}; ephemeral ${report.ephemeralAfter}`,
      );
      assert.ok(server.running, `the server died during the fuzzing\n${allLogs()}`);
      assert.ok(report.sent >= 2000, `only ${report.sent} datagrams sent`);
      assert.deepEqual(report.amplified, [], "key server answered with longer datagrams");
      assert.deepEqual(report.wrongLength, [], "key server answered with a different length");
      for (const [cat, n] of Object.entries(report.keyAnswers)) {
        assert.equal(cat, "key-valid", `the key server answered ${n} malformed (${cat}) requests`);
      }
      assert.ok(
        (report.keyAnswers["key-valid"] ?? 0) >= 0.9 * report.byCategory["key-valid"],
        `valid key requests went unanswered during the flood: ${JSON.stringify(report)}`,
      );
      assert.equal(report.cryptoAnswers, 0, "the crypto port answered a stranger");
      assert.ok(report.probesBefore.every((p) => p.endsWith(": ok")), report.probesBefore.join());
      assert.ok(report.probesAfter.every((p) => p.endsWith(": ok")), report.probesAfter.join());
      assert.equal(report.ephemeralAfter, "ok");

      // Still serving: a new TCP connection through the existing tunnel, and ICMP.
      const after = await curl(clientNs, `${url}after-fuzzing`);
      assert.equal(after.http, "200", `curl after fuzzing: ${describeCurl(after)}\n${allLogs()}`);
      assert.match(after.remoteIp, /^10\.43\./);
      const pAfter = await ping(clientNs, tunnelAddr, 5);
      assert.equal(pAfter.received, pAfter.sent, "ping after fuzzing lost packets");

      // SIGTERM: clean exit, no TUN, no process.
      const pid = server.pid;
      const status = await server.stop("SIGTERM", 10_000, true);
      assert.equal(status.code, 0, `server exit status ${status.code}\n${allLogs()}`);
      assert.equal(status.signal, null, `server was killed by ${status.signal}`);
      assert.match(server.output(), /SIGTERM: shutting down/);
      assert.match(server.output(), /stopped after \d+ handshakes/);
      assert.deepEqual(await tunDevices(serverNs), [], "TUN device left after SIGTERM");
      assert.ok(!isAlive(pid), `server pid ${pid} still alive`);
      const stray = (await strayProcesses(serverNs, [http.pid, dns.process.pid]))
        .filter((p) => p.includes(MAIN_TS));
      assert.deepEqual(stray, [], "processes of ours left in the server namespace");
      const drops = dropTotals(server.output());
      console.log(`server drop counters: ${JSON.stringify(drops)}`);
      assert.ok((drops["handshake-replay"] ?? 0) > 0, "replayed handshakes were not refused");
      // Garbage tags, replays and flipped headers are refused by the session, not elsewhere.
      const refused = ["tunnel-auth", "tunnel-no-key", "tunnel-tid"]
        .reduce((n, k) => n + (drops[k] ?? 0), 0);
      assert.ok(refused > 0, "no forged tunnel packet was refused by its session");
    } catch (e) {
      failure = e;
    }
    const td = new Teardown();
    await td.attempt("stop reference client", () => client?.stop());
    await td.attempt("stop capture", () => capture?.stop("SIGINT", 2000));
    await td.attempt("stop server", () => server?.stop("SIGTERM", 10_000));
    await td.attempt("stop http", () => http?.stop());
    await td.attempt("stop dnsmasq", () => dns?.stop());
    if (lab) {
      const l = lab;
      await td.attempt("netfilter leftovers", async () => {
        assert.deepEqual(await clientNetfilterLeftovers(l.clientNs), []);
      });
    }
    await td.attempt("destroy lab", () => destroyLab(PREFIX));
    if (refRoot) await td.attempt("release reference root", releaseReferenceRoot);
    for (const d of [keyDir, work]) {
      if (d) await td.attempt(`remove ${d}`, () => Deno.remove(d, { recursive: true }));
    }
    await td.attempt("lab leftovers", async () => assert.deepEqual(await labLeftovers(PREFIX), []));
    console.log(`server_test main: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    td.finish(failure);
  },
});

interface BadCase {
  what: string;
  args: string[];
  code: number;
  message: RegExp;
  /** Prepares the case (e.g. a port already taken); returns a cleanup. */
  setup?: () => Promise<() => Promise<void>>;
}

Deno.test({
  name: "server: bad options and bad key files fail early with a clear message, nothing left",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const problem = labPermissionProblem("tests/server_test.ts");
    if (problem) throw new Error(problem);
    const t0 = performance.now();
    let lab: Lab | null = null;
    let dir: string | null = null;
    let failure: unknown = null;
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: BAD_PREFIX });
      const ns = lab.serverNs;
      await removeStaleTempDirs(["pqts-srvbad-"]);
      dir = await Deno.makeTempDir({ prefix: "pqts-srvbad-" });
      // Key directories: a good one (the project's reference fixtures, modes as keygen and the
      // reference write them) and broken copies.
      const keyDir = async (name: string, change?: (d: string) => Promise<void>) => {
        const d = `${dir}/${name}`;
        await Deno.mkdir(d, { mode: 0o700 });
        await copyFixtureKeys(d);
        await change?.(d);
        return d;
      };
      const good = await keyDir("good");
      const noSk = await keyDir("no-mceliece-sk", (d) => Deno.remove(`${d}/mceliece_sk`));
      const shortPk = await keyDir("short-mceliece-pk", async (d) => {
        const pk = await Deno.readFile(`${d}/mceliece_pk`);
        await Deno.writeFile(`${d}/mceliece_pk`, pk.subarray(0, 1000));
      });
      const wrongX = await keyDir(
        "wrong-x25519-sk",
        (d) => Deno.writeFile(`${d}/x25519_sk`, crypto.getRandomValues(new Uint8Array(32))),
      );
      const readableSk = await keyDir("group-readable-mceliece-sk", async (d) => {
        await Deno.chmod(`${d}/mceliece_sk`, 0o640);
        await Deno.chmod(`${d}/session_key`, 0o604);
      });
      const writableDir = await keyDir("world-writable-dir", (d) => Deno.chmod(d, 0o777));
      // Another user's secret key (nobody's), and a public key the group may replace.
      const foreignSk = await keyDir(
        "foreign-x25519-sk",
        (d) => Deno.chown(`${d}/x25519_sk`, 65534, 65534),
      );
      const writablePk = await keyDir(
        "group-writable-mceliece-pk",
        (d) => Deno.chmod(`${d}/mceliece_pk`, 0o664),
      );
      const referenceModes = await keyDir("reference-modes", (d) => Deno.chmod(d, 0o755));
      const emptySession = await keyDir(
        "empty-session-key",
        (d) => Deno.writeFile(`${d}/session_key`, new Uint8Array(0)),
      );

      const cases: BadCase[] = [
        { what: "unknown option", args: ["--frobnicate"], code: 2, message: /Unknown option/ },
        { what: "port 0", args: ["-p", "0"], code: 2, message: /--port must be a port number/ },
        { what: "port text", args: ["-k", "abc"], code: 2, message: /--keyport must be a port/ },
        {
          what: "same ports",
          args: ["-p", "42424", "-k", "42424"],
          code: 2,
          message: /--port and --keyport must differ/,
        },
        { what: "mask 7", args: ["-m", "7"], code: 2, message: /--mask\)? must be from 8 to 24/ },
        { what: "mask 28", args: ["-m", "28"], code: 2, message: /--mask\)? must be from 8 to 24/ },
        { what: "bad addr", args: ["-a", "10.42.0"], code: 2, message: /--addr must be an IPv4/ },
        {
          what: "bad host ip",
          args: ["-H", "256.1.1.1"],
          code: 2,
          message: /--host-ip must be an IPv4/,
        },
        { what: "mtu 100", args: ["--mtu", "100"], code: 2, message: /--mtu must be from 576/ },
        {
          what: "bad interface name",
          args: ["-i", "bad/name"],
          code: 2,
          message: /--interface must be 1 to 15/,
        },
        {
          what: "missing key dir",
          args: ["-d", `${dir}/absent`],
          code: 1,
          message: /absent\/mceliece_pk does not exist \(run "pqconnect keygen/,
        },
        {
          what: "missing mceliece_sk",
          args: ["-d", noSk],
          code: 1,
          message: /mceliece_sk does not exist/,
        },
        {
          what: "truncated mceliece_pk",
          args: ["-d", shortPk],
          code: 1,
          message: /mceliece_pk has 1000 bytes, expected 1047319/,
        },
        {
          what: "x25519_sk of another key",
          args: ["-d", wrongX],
          code: 1,
          message: /x25519_sk does not belong to x25519_pk/,
        },
        {
          what: "empty session_key",
          args: ["-d", emptySession],
          code: 1,
          message: /session_key has 0 bytes, expected 32/,
        },
        {
          // As ssh with a private key: refused, each file named with its mode and the fix.
          what: "secret key files others may read",
          args: ["-d", readableSk],
          code: 1,
          message: new RegExp(
            `refusing to use these keys:\n  ${readableSk}/mceliece_sk is mode 0640: .*` +
              `\\(chmod 600 ${readableSk}/mceliece_sk\\)\n  ${readableSk}/session_key is mode ` +
              `0604: .*\\(chmod 600 ${readableSk}/session_key\\)`,
          ),
        },
        {
          what: "key directory others may write to",
          args: ["-d", writableDir],
          code: 1,
          message: new RegExp(
            `${writableDir} is mode 0777: others than its owner could replace the keys ` +
              `\\(chmod go-w ${writableDir}\\)`,
          ),
        },
        {
          what: "a secret key file owned by another user",
          args: ["-d", foreignSk],
          code: 1,
          message: new RegExp(
            `refusing to use these keys:\n  ${foreignSk}/x25519_sk is owned by uid 65534, not by ` +
              `root that the server runs as: that user may read and replace this secret key ` +
              `\\(chown root ${foreignSk}/x25519_sk\\)\n`,
          ),
        },
        {
          what: "a public key file the group may write",
          args: ["-d", writablePk],
          code: 1,
          message: new RegExp(
            `refusing to use these keys:\n  ${writablePk}/mceliece_pk is mode 0664: others than ` +
              `its owner could replace the server's public key, and with it the identity clients ` +
              `verify \\(chmod go-w ${writablePk}/mceliece_pk\\)\n`,
          ),
        },
        {
          // The reference's keygen makes the directory 0755: its keys start our server. The
          // user, checked after the keys, shows they were accepted.
          what: "the reference's 0755 key directory",
          args: ["-d", referenceModes, "--user", "pqts-no-such-user"],
          code: 1,
          message: /user "pqts-no-such-user" does not exist/,
        },
        {
          what: "unknown user",
          args: ["--user", "pqts-no-such-user"],
          code: 1,
          message: /user "pqts-no-such-user" does not exist/,
        },
        { what: "user root", args: ["--user", "root"], code: 1, message: /is root/ },
        {
          // Fails after the TUN device exists: it must be removed again.
          what: "key port taken",
          args: ["-k", "42425"],
          code: 1,
          message: /42425|[Aa]ddress (already )?in use/,
          setup: async () => {
            const holder = await holdUdpPort(ns, 42425);
            return async () => void await holder.stop();
          },
        },
        {
          what: "interface name of an existing veth",
          args: ["-i", lab.serverIf],
          code: 1,
          message: new RegExp(`${lab.serverIf}|TUNSETIFF|tun`, "i"),
        },
      ];
      const problems: string[] = [];
      for (const c of cases) {
        const cleanup = await c.setup?.();
        try {
          const keys = c.args.includes("-d") ? [] : ["-d", good];
          const argv = [
            Deno.execPath(),
            "run",
            ...serverPermissions(dir),
            MAIN_TS,
            "server",
            ...keys,
            ...c.args,
          ];
          const r = await run(ns, argv, {
            check: false,
            timeoutMs: 30_000,
            env: denoEnv(),
          });
          const msg = (r.stderr + r.stdout).trim().split("\n")[0];
          const ok = !r.timedOut && r.code === c.code && c.message.test(r.stderr);
          console.log(`  ${ok ? "ok  " : "FAIL"} ${c.what}: exit ${r.code}: ${msg}`);
          if (!ok) {
            problems.push(
              `${c.what}: expected exit ${c.code} and ${c.message}, got ${
                r.timedOut ? "a hang" : `exit ${r.code}`
              }:\n${r.stderr}${r.stdout}`,
            );
          }
          const tuns = await tunDevices(ns);
          if (tuns.length) problems.push(`${c.what}: TUN device(s) left behind: ${tuns}`);
        } finally {
          await cleanup?.();
        }
      }
      // The veth used in the name clash must have survived it.
      const veth = await run(null, ["ip", "-n", ns, "link", "show", lab.serverIf], {
        check: false,
      });
      if (veth.code !== 0) problems.push(`${lab.serverIf} was removed by the name clash case`);
      assert.deepEqual(await strayProcesses(ns), [], "processes left in the namespace");
      assert.deepEqual(problems, [], problems.join("\n\n"));
    } catch (e) {
      failure = e;
    }
    const td = new Teardown();
    await td.attempt("destroy lab", () => destroyLab(BAD_PREFIX));
    if (dir) await td.attempt("remove temp dir", () => Deno.remove(dir!, { recursive: true }));
    await td.attempt(
      "lab leftovers",
      async () => assert.deepEqual(await labLeftovers(BAD_PREFIX), []),
    );
    console.log(`server_test bad options: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    td.finish(failure);
  },
});
