// `pqconnect check` in the two-namespace lab, run as an operator would: unprivileged sockets
// only, from the client namespace, against our server and against the reference server (same
// keys, same name), and against deliberately broken announcements (wrong hash, wrong port, a
// stopped server, no label, other local keys), each of which must name its own cause and exit
// status.
//
// Needs root (namespaces, TUN for the servers, the reference root at /srv/pqref).

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  type Lab,
  labLeftovers,
  type LabProcess,
  notRootReason,
  run,
} from "./lab/netns.ts";
import { type Dnsmasq, mergeZones, pq1Label, startDnsmasq, type Zone } from "./lab/dnsmasq.ts";
import {
  installServerKeys,
  prepareReferenceRoot,
  type ReferenceProcess,
  releaseReferenceRoot,
  startReferenceServer,
} from "./lab/reference.ts";
import {
  cacheDependencies,
  copyFixtureKeys,
  denoEnv,
  ensurePrivsepUser,
  labPermissionProblem,
  logs,
  pqconnectArgv,
  PROJECT_DIR,
  removeStaleTempDirs,
  startHttpServer,
  startOurServer,
  Teardown,
} from "./helpers/lab_util.ts";
import { fixtureDir } from "./fixtures.ts";
import { KeyTree } from "../lib/core/keytree.ts";
import { base32Encode } from "../lib/core/base32.ts";
import { EXIT } from "../lib/check/report.ts";

const PREFIX = "pqts-chk";
const HTTP_PORT = 8080;

const skip = notRootReason();
if (skip) console.log(`check_test: skipped, ${skip}`);

/** `pqconnect check` with the permissions of its deno.json task: net (DNS and any server),
 * and read on the key directory when -d is given. Nothing else: no ffi, no run, no write. */
export function checkPermissions(keyDir?: string): string[] {
  return [
    "--no-prompt",
    `--config=${PROJECT_DIR}/deno.json`,
    "--allow-net",
    ...(keyDir ? [`--allow-read=${keyDir}`] : []),
  ];
}

interface CheckRun {
  code: number;
  stdout: string;
  stderr: string;
}

async function check(ns: string, args: string[], keyDir?: string): Promise<CheckRun> {
  const r = await run(ns, pqconnectArgv(checkPermissions(keyDir), ["check", ...args]), {
    env: denoEnv(),
    check: false,
    timeoutMs: 90_000,
  });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** Every step must appear, passed, with a time. */
const ALL_STEPS = [
  "DNS announcement",
  "long-term keys",
  "ephemeral key",
  "0-RTT handshake",
  "answer inside the tunnel",
];

function assertAllPassed(r: CheckRun, steps: string[], what: string): void {
  const out = `${what}:\n${r.stdout}${r.stderr}`;
  assert.equal(r.code, 0, out);
  for (const s of steps) assert.match(r.stdout, new RegExp(`\\[ok  \\] ${s} +\\d+ ms`), out);
  assert.doesNotMatch(r.stdout, /\[FAIL\]/, out);
  assert.match(r.stdout, /PASSED: every step/, out);
}

function assertFailed(r: CheckRun, code: number, step: string, cause: RegExp, what: string) {
  const out = `${what}:\n${r.stdout}${r.stderr}`;
  assert.equal(r.code, code, out);
  assert.match(r.stdout, new RegExp(`\\[FAIL\\] ${step} +\\d+ ms`), out);
  assert.match(r.stdout, cause, out);
  assert.match(r.stdout, new RegExp(`FAILED at "${step}" \\(exit ${code}\\)`), out);
}

Deno.test({
  name: "check: every step against our server and the reference; broken announcements",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const problem = labPermissionProblem("tests/check_test.ts");
    if (problem) throw new Error(problem);
    const t0 = performance.now();
    let lab: Lab | null = null;
    let keyDir: string | null = null;
    let otherKeys: string | null = null;
    let dns: Dnsmasq | null = null;
    let server: LabProcess | null = null;
    let http: LabProcess | null = null;
    let reference: ReferenceProcess | null = null;
    let refRoot = false;
    let failure: unknown = null;
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      const { serverNs, clientNs, serverAddr } = lab;
      await removeStaleTempDirs(["pqts-chk-"]);
      // The reference's own key files (tests/fixtures), as a server directory (secrets 0600).
      keyDir = await Deno.makeTempDir({ prefix: "pqts-chk-keys-" });
      await copyFixtureKeys(keyDir);
      // Another key directory: same McEliece key, another X25519 key, so another hash.
      otherKeys = await Deno.makeTempDir({ prefix: "pqts-chk-other-" });
      await Deno.copyFile(`${fixtureDir}/mceliece_pk`, `${otherKeys}/mceliece_pk`);
      await Deno.writeFile(`${otherKeys}/x25519_pk`, new Uint8Array(32).fill(9));

      const tree = KeyTree.build(
        await Deno.readFile(`${keyDir}/mceliece_pk`),
        await Deno.readFile(`${keyDir}/x25519_pk`),
      );
      const hash = base32Encode(tree.root);
      const wrongHash = base32Encode(new Uint8Array(32).fill(0x42));
      const ports = { crypto: 42424, key: 42425 };
      const name = (label: string) => `${label}.lab.test`;
      const zone: Zone = mergeZones(
        {
          domain: "lab.test",
          hosts: [
            { name: name(pq1Label(hash, ports)), addr: serverAddr },
            { name: name(pq1Label(hash)), addr: serverAddr },
            { name: name(pq1Label(wrongHash, ports)), addr: serverAddr },
            { name: name(pq1Label(hash, { crypto: 42434, key: 42435 })), addr: serverAddr },
            { name: "plain.lab.test", addr: serverAddr },
          ],
          cnames: [
            // Ports in the label, as the reference's keygen prints it.
            { alias: "www.lab.test", target: name(pq1Label(hash, ports)) },
            // A 52-character label: the ports come from TXT records.
            { alias: "txt.lab.test", target: name(pq1Label(hash)) },
            { alias: "wronghash.lab.test", target: name(pq1Label(wrongHash, ports)) },
            {
              alias: "wrongport.lab.test",
              target: name(pq1Label(hash, { crypto: 42434, key: 42435 })),
            },
          ],
          txts: [
            { name: name(pq1Label(hash)), text: `p=${ports.crypto}` },
            { name: `ks.${name(pq1Label(hash))}`, text: `ip=${serverAddr};p=${ports.key}` },
          ],
        },
      );
      dns = await startDnsmasq({ ns: serverNs, listen: serverAddr, zone });
      http = await startHttpServer(serverNs, HTTP_PORT);
      server = await startOurServer(serverNs, {
        keyDir,
        port: ports.crypto,
        keyPort: ports.key,
        hostIp: serverAddr,
      });
      const allLogs = () =>
        logs({ "our server": server?.output(), reference: reference?.log(), dns: dns?.log() });

      // Our server: every step, with the server's own key directory.
      const ours = await check(clientNs, ["www.lab.test", "-d", keyDir], keyDir);
      console.log(`--- check www.lab.test -d KEYDIR (our server) ---\n${ours.stdout}`);
      assertAllPassed(ours, [...ALL_STEPS, "local keys match DNS"], `our server\n${allLogs()}`);
      assert.match(ours.stdout, new RegExp(`key hash \\(base32\\) ${hash}`));
      assert.match(ours.stdout, /ports \(from the label\): crypto 42424, key 42425/);
      assert.match(ours.stdout, /937 parts from 198\.18\.0\.1:42425/);
      assert.match(ours.stdout, /ICMP echo reply from 198\.18\.0\.1 .* to 10\.42\.0\.\d+/);

      // Ports from TXT, a TCP probe to a listening port, JSON output.
      const txt = await check(clientNs, ["txt.lab.test", "--json", "--port", String(HTTP_PORT)]);
      assert.equal(txt.code, 0, `${txt.stdout}${txt.stderr}`);
      const doc = JSON.parse(txt.stdout);
      console.log(
        `--- check txt.lab.test --json --port ${HTTP_PORT} (our server) ---\n${txt.stdout}`,
      );
      assert.equal(doc.ok, true);
      assert.deepEqual(
        doc.steps.map((s: { step: string; verdict: string }) => `${s.step}:${s.verdict}`),
        ["dns:pass", "keys:pass", "ephemeral:pass", "handshake:pass", "tunnel:pass"],
      );
      assert.equal(doc.steps[0].data.portsFrom, "TXT");
      assert.match(doc.steps[4].details[0], /TCP SYN-ACK \(port 8080 open\)/);
      assert.ok(doc.steps[4].data.rttMs > 0 && doc.steps[4].data.rttMs < 1000);

      // --dns-only sends nothing to the server.
      const dnsOnly = await check(clientNs, ["www.lab.test", "--dns-only"]);
      assertAllPassed(dnsOnly, ["DNS announcement"], "dns only");
      assert.doesNotMatch(dnsOnly.stdout, /long-term keys/);

      // Broken announcements, each with its own cause and exit status.
      const hashCase = await check(clientNs, ["wronghash.lab.test"]);
      console.log(`--- check wronghash.lab.test ---\n${hashCase.stdout}`);
      assertFailed(
        hashCase,
        EXIT.keyMismatch,
        "long-term keys",
        /key mismatch: the server runs with other keys/,
        "wrong hash",
      );
      assert.match(hashCase.stdout, new RegExp(`serves key hash ${hash}`));

      const portCase = await check(clientNs, ["wrongport.lab.test"]);
      console.log(`--- check wrongport.lab.test ---\n${portCase.stdout}`);
      assertFailed(
        portCase,
        EXIT.wrongPort,
        "long-term keys",
        /wrong port: the announcement says key port 42435, the server listens on 42425/,
        "wrong port",
      );

      const plain = await check(clientNs, ["plain.lab.test"]);
      assertFailed(plain, EXIT.dns, "DNS announcement", /carries no pq1 label/, "no label");

      const newKeys = await check(clientNs, ["www.lab.test", "-d", otherKeys], otherKeys);
      assertFailed(
        newKeys,
        EXIT.keydirMismatch,
        "local keys match DNS",
        /new keys, old DNS/,
        "other keys",
      );

      const status = await server.stop("SIGTERM", 10_000, true);
      assert.equal(status.code, 0);
      const stopped = await check(clientNs, ["www.lab.test"]);
      console.log(`--- check www.lab.test (server stopped) ---\n${stopped.stdout}`);
      assertFailed(
        stopped,
        EXIT.unreachable,
        "long-term keys",
        /nothing answers on UDP 198\.18\.0\.1:42425: the server is not running/,
        "stopped",
      );

      // The reference server, on the same keys, ports and name.
      await prepareReferenceRoot();
      refRoot = true;
      await installServerKeys(keyDir);
      reference = await startReferenceServer(serverNs, { ...ports, hostIp: serverAddr });
      const ref = await check(clientNs, ["www.lab.test", "-d", keyDir], keyDir);
      console.log(`--- check www.lab.test -d KEYDIR (reference server) ---\n${ref.stdout}`);
      assertAllPassed(ref, [...ALL_STEPS, "local keys match DNS"], `reference\n${allLogs()}`);
      // The reference blanks the inner destination of what it sends back (0.0.0.0).
      assert.match(ref.stdout, /ICMP echo reply from 198\.18\.0\.1 .* to 0\.0\.0\.0/);
      const refTxt = await check(clientNs, ["txt.lab.test", "--port", String(HTTP_PORT)]);
      console.log(
        `--- check txt.lab.test --port ${HTTP_PORT} (reference server) ---\n${refTxt.stdout}`,
      );
      assertAllPassed(refTxt, ALL_STEPS, `reference, TXT ports\n${allLogs()}`);
      assert.match(refTxt.stdout, /TCP SYN-ACK \(port 8080 open\)/);
    } catch (e) {
      failure = e;
    }
    const td = new Teardown();
    await td.attempt("stop reference server", () => reference?.stop());
    await td.attempt("stop our server", () => server?.stop("SIGTERM", 10_000));
    await td.attempt("stop http", () => http?.stop());
    await td.attempt("stop dnsmasq", () => dns?.stop());
    await td.attempt("destroy lab", () => destroyLab(PREFIX));
    if (refRoot) await td.attempt("release reference root", releaseReferenceRoot);
    for (const d of [keyDir, otherKeys]) {
      if (d) await td.attempt(`remove ${d}`, () => Deno.remove(d, { recursive: true }));
    }
    await td.attempt("lab leftovers", async () => assert.deepEqual(await labLeftovers(PREFIX), []));
    console.log(`check_test: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    td.finish(failure);
  },
});
