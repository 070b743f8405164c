// Issue 10, point 5: crashes. SIGKILL the server, then the client, and start each again: the
// stale TUN device, DNS queue rule, runtime directory and control socket are cleaned up or
// reused; the client's applications get through again within 5 s of the server's restart; and
// after a final SIGTERM nothing is left behind.
//
// Needs root (namespaces, TUN, NFQUEUE).

import assert from "node:assert/strict";
import { isAlive, notRootReason, run, sleep } from "./netns.ts";
import {
  curl,
  describeCurl,
  labPermissionProblem,
  startOurClient,
  strayProcesses,
  tunDevices,
} from "../helpers/lab_util.ts";
import { TunnelLab } from "../helpers/tunnel_lab.ts";

const skip = notRootReason();

/** An application requesting every 0.5 s; `since(t)` is its first success started after t. */
function application(ns: string, url: string) {
  const results: { start: number; end: number; ok: boolean }[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const start = performance.now();
      const r = await curl(ns, `${url}app`, { maxSec: 2 });
      results.push({ start, end: performance.now(), ok: r.http === "200" });
      const wait = 500 - (performance.now() - start);
      if (wait > 0) await sleep(wait);
    }
  })();
  return {
    async since(t: number, timeoutMs: number) {
      const end = performance.now() + timeoutMs;
      while (performance.now() < end) {
        const hit = results.find((r) => r.ok && r.start >= t);
        if (hit) return hit;
        await sleep(100);
      }
      return null;
    },
    async stop() {
      running = false;
      await loop;
    },
  };
}

async function firewallRules(ns: string): Promise<string> {
  const ipt = await run(ns, ["iptables-save"]);
  const nft = await run(ns, ["nft", "list", "ruleset"]);
  return `${ipt.stdout}\n${nft.stdout}`.split("\n").filter((l) => l.includes("pqconnect-ts"))
    .join("\n");
}

Deno.test({
  name: "crashes: SIGKILL either daemon, start again: cleaned up, back within 5 s, then clean",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const problem = labPermissionProblem("tests/lab/crash_test.ts");
    if (problem) throw new Error(problem);
    const t = await TunnelLab.start("pqts-crash");
    let failure: unknown = null;
    const { clientNs, serverNs } = t.lab;
    try {
      const first = await curl(clientNs, t.url, { maxSec: 30 });
      assert.equal(first.http, "200", `${describeCurl(first)}\n${t.logs()}`);

      // --- the server dies without a word and comes back
      const app = application(clientNs, t.url);
      try {
        await sleep(1500);
        const killed = performance.now();
        await t.server!.stop("SIGKILL", 3000, true);
        assert.deepEqual(await tunDevices(serverNs), [], "a killed server's TUN device stays");
        await sleep(1000); // the application meets a dead server for a while
        const tStart = performance.now();
        await t.restartServer();
        const tUp = performance.now();
        const back = await app.since(tUp, 15_000);
        assert.ok(back, `no request got through after the server's restart\n${t.logs()}`);
        const recovery = (back.end - tUp) / 1000;
        console.log(
          `FIGURES crash: server SIGKILLed, started again in ${
            ((tUp - tStart) / 1000).toFixed(2)
          } ` +
            `s; the application got through ${recovery.toFixed(2)} s after the new server was ` +
            `up (${((back.end - killed) / 1000).toFixed(2)} s after the kill)`,
        );
        assert.ok(recovery <= 5, `recovery took ${recovery.toFixed(2)} s (limit 5 s)`);
      } finally {
        await app.stop();
      }

      // --- the client dies without a word: its TUN device, queue rule, runtime directory and
      // control socket are left to the next start
      const old = t.client!;
      const rulesOfOne = (await firewallRules(clientNs)).split("\n").filter((l) => l.trim());
      await old.process.stop("SIGKILL", 3000, true);
      for (let i = 0; i < 20 && isAlive(old.workerPid); i++) await sleep(100);
      const leftover = {
        workerAlive: isAlive(old.workerPid),
        tun: await tunDevices(clientNs),
        rules: await firewallRules(clientNs),
        runtimeDir: await Deno.stat(t.runtimeDir).then(() => true, () => false),
      };
      console.log(`FIGURES crash: left by a SIGKILLed client: ${JSON.stringify(leftover)}`);
      const tStart = performance.now();
      t.client = await startOurClient(clientNs, t.runtimeDir);
      const tUp = performance.now();
      let again = await curl(clientNs, `${t.url}after-client-crash`, { maxSec: 10 });
      for (let i = 0; i < 5 && again.http !== "200"; i++) {
        again = await curl(clientNs, `${t.url}after-client-crash`, { maxSec: 10 });
      }
      assert.equal(again.http, "200", `after the client's restart: ${describeCurl(again)}`);
      console.log(
        `FIGURES crash: client SIGKILLed, started again in ${((tUp - tStart) / 1000).toFixed(2)} ` +
          `s; first request after it ${again.seconds.toFixed(2)} s`,
      );
      assert.equal((await tunDevices(clientNs)).length, 1, "one TUN device, not two");
      const rules = (await firewallRules(clientNs)).split("\n").filter((l) => l.trim());
      assert.deepEqual(rules, rulesOfOne, "the stale queue rules were not replaced");

      // --- a final SIGTERM to both: nothing left
      const client = t.client!;
      const status = await client.process.stop("SIGTERM", 10_000, true);
      assert.equal(status.code, 0, `client exit ${status.code}\n${t.logs()}`);
      const sstatus = await t.server!.stop("SIGTERM", 10_000, true);
      assert.equal(sstatus.code, 0, `server exit ${sstatus.code}\n${t.logs()}`);
      assert.deepEqual(await tunDevices(clientNs), [], "client TUN device left");
      assert.deepEqual(await tunDevices(serverNs), [], "server TUN device left");
      assert.equal(await firewallRules(clientNs), "", "queue rule left");
      await assert.rejects(Deno.stat(t.runtimeDir), Deno.errors.NotFound, "runtime dir left");
      assert.ok(!isAlive(client.workerPid), "worker left");
      assert.deepEqual(await strayProcesses(clientNs), [], "processes left in the client ns");
      const errors = t.errorLines();
      console.log(`crash: error-level lines: ${errors.length ? errors.join("\n") : "none"}`);
    } catch (e) {
      failure = e;
    }
    await t.stop(failure);
  },
});
