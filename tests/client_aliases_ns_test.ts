// The reference's client spellings at work in the lab: `pqconnect client --interface-name NAME
// -H ADDRESS -vv` makes the TUN device NAME and delivers the packets that come back from a
// server to ADDRESS (the reference client's --host-ip: a client on a router or VM for other
// hosts), and `pqconnect client --show` prints what `pqconnect status` prints. Needs root.

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  type Lab,
  labLeftovers,
  type LabProcess,
  notRootReason,
  run,
  spawn,
} from "./lab/netns.ts";
import { announcement, type Dnsmasq, startDnsmasq } from "./lab/dnsmasq.ts";
import {
  cacheDependencies,
  clientPermissions,
  denoEnv,
  ensurePrivsepUser,
  fixtureKeyDir,
  labPermissionProblem,
  logs,
  pqconnectArgv,
  removeStaleTempDirs,
  startOurServer,
  startTcpdump,
  statusPermissions,
  Teardown,
  tunDevices,
} from "./helpers/lab_util.ts";
import { KeyTree } from "../lib/core/keytree.ts";
import { base32Encode } from "../lib/core/base32.ts";

const PREFIX = "pqts-cal";

const skip = notRootReason();
if (skip) console.log(`client_aliases_ns_test: skipped, ${skip}`);

Deno.test({
  name: "client: --interface-name, -H and -vv take effect; --show prints the status",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const problem = labPermissionProblem("tests/client_aliases_ns_test.ts");
    if (problem) throw new Error(problem);
    let lab: Lab | null = null;
    let work: string | null = null;
    let dns: Dnsmasq | null = null;
    let server: LabProcess | null = null;
    let client: LabProcess | null = null;
    let capture: LabProcess | null = null;
    let failure: unknown = null;
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      const { serverNs, clientNs, serverAddr, clientAddr } = lab;
      await removeStaleTempDirs(["pqts-cal-"]);
      work = await Deno.makeTempDir({ prefix: "pqts-cal-" });
      const keyDir = await fixtureKeyDir(work);
      const root = KeyTree.build(
        await Deno.readFile(`${keyDir}/mceliece_pk`),
        await Deno.readFile(`${keyDir}/x25519_pk`),
      ).root;
      dns = await startDnsmasq({
        ns: serverNs,
        listen: serverAddr,
        zone: announcement({
          alias: "www",
          rootBase32: base32Encode(root),
          addr: serverAddr,
          ports: "label",
        }),
      });
      server = await startOurServer(serverNs, {
        keyDir,
        port: 42424,
        keyPort: 42425,
        hostIp: serverAddr,
      });
      // Not under the 0700 temp dir: the worker (user pqconnect) must reach its socket.
      const runtimeDir = `/run/${PREFIX}`;
      client = spawn(
        clientNs,
        pqconnectArgv(clientPermissions(runtimeDir), [
          "client",
          "--interface-name",
          "pqcalias0",
          "-H",
          clientAddr,
          "-vv",
          "--runtime-dir",
          runtimeDir,
        ]),
        { name: `client@${clientNs}`, env: denoEnv() },
      );
      await client.waitFor(/DNS answers go through queue \d+/, 60_000);
      assert.deepEqual(await tunDevices(clientNs), ["pqcalias0"]);

      capture = await startTcpdump(clientNs, ["-i", "pqcalias0", "icmp"]);
      const ping = await run(clientNs, ["ping", "-c", "3", "-W", "3", "www.lab.test"], {
        check: false,
        timeoutMs: 30_000,
      });
      const allLogs = () => logs({ client: client?.output(), server: server?.output() });
      assert.match(ping.stdout, / 0% packet loss/, `${ping.stdout}${ping.stderr}\n${allLogs()}`);
      // -vv is verbose: tunnel events are logged.
      await client.waitFor(/tunnel [0-9a-f]{12} up/, 5000);
      await capture.stop("SIGINT", 3000, true);
      const replies = capture.output().split("\n").filter((l) => l.includes("echo reply"));
      console.log(`replies on pqcalias0:\n${replies.join("\n")}`);
      assert.ok(replies.length >= 2, capture.output());
      // Delivered to the -H address, not to the TUN address 10.43.0.1.
      for (const r of replies) assert.match(r, new RegExp(`10\\.43\\.0\\.\\d+ > ${clientAddr}:`));

      const status = await run(
        clientNs,
        pqconnectArgv(statusPermissions(runtimeDir), ["status", "--runtime-dir", runtimeDir]),
        { env: denoEnv() },
      );
      const show = await run(
        clientNs,
        pqconnectArgv(statusPermissions(runtimeDir), [
          "client",
          "--show",
          "--runtime-dir",
          runtimeDir,
        ]),
        { env: denoEnv() },
      );
      console.log(`status:\n${status.stdout}`);
      assert.match(status.stdout, /^pqcalias0 10\.43\.0\.1: 1 server\(s\)/);
      // The same document; only the idle time may have moved on by a second in between.
      const norm = (s: string) => s.replace(/\s\d+s\s+\d+s\s/g, " T ");
      assert.equal(norm(show.stdout), norm(status.stdout));
    } catch (e) {
      failure = e;
    }
    const td = new Teardown();
    await td.attempt("stop capture", () => capture?.stop("SIGINT", 2000));
    await td.attempt("stop client", () => client?.stop("SIGTERM", 10_000));
    await td.attempt("stop server", () => server?.stop("SIGTERM", 10_000));
    await td.attempt("stop dnsmasq", () => dns?.stop());
    await td.attempt("destroy lab", () => destroyLab(PREFIX));
    if (work) await td.attempt(`remove ${work}`, () => Deno.remove(work!, { recursive: true }));
    await td.attempt("lab leftovers", async () => assert.deepEqual(await labLeftovers(PREFIX), []));
    td.finish(failure);
  },
});
