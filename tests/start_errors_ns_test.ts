// What a user sees when a daemon cannot start: with its UDP port taken, the reason on stderr (for
// the client it comes from the worker, which binds the port), exit status 1, and nothing left
// behind (no TUN device, no runtime directory); a second client while one runs is refused before
// it touches the first's DNS queue rule or control socket. In a lab namespace, with the daemons'
// own narrow permissions; needs root.

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  type Lab,
  type LabProcess,
  notRootReason,
  run,
  spawn,
} from "./lab/netns.ts";
import {
  cacheDependencies,
  clientPermissions,
  denoEnv,
  ensurePrivsepUser,
  fixtureKeyDir,
  type OurClient,
  pqconnectArgv,
  serverPermissions,
  startOurClient,
  startOurServer,
  statusPermissions,
  tunDevices,
} from "./helpers/lab_util.ts";

const PREFIX = "pqts-ste";
const skip = notRootReason();
if (skip) console.log(`start_errors_ns_test: skipped, ${skip}`);

/** Holds UDP `port` on every address in `ns` until stopped. */
async function holdPort(ns: string, port: number): Promise<LabProcess> {
  const holder = spawn(ns, [
    "python3",
    "-c",
    `import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n` +
    `s.bind(("0.0.0.0",${port}))\nprint("holding",flush=True)\ntime.sleep(120)`,
  ], { name: `udp ${port} holder` });
  await holder.waitFor("holding", 10_000);
  return holder;
}

Deno.test({
  name: "a daemon whose UDP port is taken says so and exits 1, leaving nothing behind",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let lab: Lab | null = null;
    let work: string | null = null;
    const holders: LabProcess[] = [];
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      work = await Deno.makeTempDir({ prefix: `${PREFIX}-` });

      const keyDir = await fixtureKeyDir(work);
      holders.push(await holdPort(lab.serverNs, 42424));
      const server = await run(
        lab.serverNs,
        pqconnectArgv(serverPermissions(keyDir), ["server", "-d", keyDir]),
        { env: denoEnv(), check: false, timeoutMs: 60_000 },
      );
      assert.equal(server.code, 1, server.stderr);
      assert.match(
        server.stderr,
        /pqconnect server: bind\(0\.0\.0\.0:42424\): Address already in use/,
      );
      assert.deepEqual(await tunDevices(lab.serverNs), [], "the server's TUN device is gone");

      const runtimeDir = `${work}/run`;
      holders.push(await holdPort(lab.clientNs, 42423));
      const client = await run(
        lab.clientNs,
        pqconnectArgv(clientPermissions(runtimeDir), ["client", "--runtime-dir", runtimeDir]),
        { env: denoEnv(), check: false, timeoutMs: 60_000 },
      );
      assert.equal(client.code, 1, client.stderr);
      // The worker's own reason, then the supervisor's summary.
      assert.match(client.stderr, /error: bind\(0\.0\.0\.0:42423\): Address already in use/);
      assert.match(client.stderr, /the client worker did not start/);
      assert.deepEqual(await tunDevices(lab.clientNs), [], "the client's TUN device is gone");
      await assert.rejects(Deno.stat(runtimeDir), Deno.errors.NotFound);
    } finally {
      for (const h of holders) await h.stop();
      if (lab) await destroyLab(lab);
      if (work) await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

/** The lines of the namespace's firewall that carry our DNS queue rule (nftables or iptables). */
async function queueRules(ns: string): Promise<string[]> {
  const nft = await run(ns, ["nft", "list", "ruleset"], { check: false });
  const ipt = await run(ns, ["iptables", "-w", "-t", "mangle", "-S"], { check: false });
  return `${nft.stdout}\n${ipt.stdout}`.split("\n").filter((l) => /queue|NFQUEUE/.test(l));
}

Deno.test({
  name: "a second client is refused and leaves the running one's rule, socket and interface",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let lab: Lab | null = null;
    let work: string | null = null;
    let first: OurClient | null = null;
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      work = await Deno.makeTempDir({ prefix: `${PREFIX}-` });
      await Deno.chmod(work, 0o755); // the worker, not root, reaches its socket in there
      const runtimeDir = `${work}/run`;
      first = await startOurClient(lab.clientNs, runtimeDir);
      const rules = await queueRules(lab.clientNs);
      assert.ok(rules.length > 0, "the first client's DNS queue rule");

      const second = await run(
        lab.clientNs,
        pqconnectArgv(clientPermissions(runtimeDir), ["client", "--runtime-dir", runtimeDir]),
        { env: denoEnv(), check: false, timeoutMs: 60_000 },
      );
      assert.equal(second.code, 1, second.stderr);
      assert.match(second.stderr, /interface pqccli0 already exists: is another pqconnect client/);

      assert.deepEqual(await queueRules(lab.clientNs), rules, "the first client's rule stays");
      assert.deepEqual(await tunDevices(lab.clientNs), ["pqccli0"]);
      const status = await run(
        lab.clientNs,
        pqconnectArgv(statusPermissions(runtimeDir), ["status", "--runtime-dir", runtimeDir]),
        { env: denoEnv(), check: false },
      );
      assert.equal(status.code, 0, `the first client's control socket answers: ${status.stderr}`);
      assert.match(status.stdout, /^pqccli0 10\.43\.0\.1: 0 server\(s\)/);
    } finally {
      await first?.process.stop("SIGTERM", 10_000);
      if (lab) await destroyLab(lab);
      if (work) await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "a second server on the same interface is refused; the running one goes on",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let lab: Lab | null = null;
    let work: string | null = null;
    let first: LabProcess | null = null;
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      work = await Deno.makeTempDir({ prefix: `${PREFIX}-` });
      const keyDir = await fixtureKeyDir(work);
      first = await startOurServer(lab.serverNs, {
        keyDir,
        port: 42424,
        keyPort: 42425,
        hostIp: lab.serverAddr,
      });
      const second = await run(
        lab.serverNs,
        pqconnectArgv(serverPermissions(keyDir), [
          "server",
          "-d",
          keyDir,
          "-p",
          "5000",
          "-k",
          "5001",
        ]),
        { env: denoEnv(), check: false, timeoutMs: 60_000 },
      );
      assert.equal(second.code, 1, second.stderr);
      assert.match(second.stderr, /interface pqcserv0 already exists: is another pqconnect server/);
      assert.deepEqual(await tunDevices(lab.serverNs), ["pqcserv0"]);
      assert.ok(first.running, "the first server still runs");
    } finally {
      await first?.stop("SIGTERM", 10_000);
      if (lab) await destroyLab(lab);
      if (work) await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
