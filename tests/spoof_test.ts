// Issue 8: pq1 has no return-routability check, so anyone can send initiations from a real
// client's address and empty that address's token bucket. As root, in two namespaces: a
// spoofer sends junk initiations (random c0) from the victim's own address at 40 a second,
// 13× the address's rate, for 6 s; meanwhile the victim, on that address, makes its tunnels.
// The server has room to spare, so its global overdraft admits the victim (before it, the
// victim met an empty bucket nearly every time). Bounded: 240 datagrams, ~20 s in all.

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  type Lab,
  type LabProcess,
  notRootReason,
  run,
  sleep,
} from "./lab/netns.ts";
import {
  cacheDependencies,
  dropTotals,
  ensurePrivsepUser,
  fixtureKeyDir,
  logs,
  startOurServer,
  Teardown,
} from "./helpers/lab_util.ts";
import { generate } from "../bench/handshake_load.ts";
import type { StepResult } from "./helpers/handshake_gen.ts";

const PREFIX = "pqts-spf";
const VICTIM = "198.18.2.19";
const SPOOF_RATE = 40;
const SPOOF_SECONDS = 6;
const skip = notRootReason();
if (skip) console.log(`spoof_test: skipped, ${skip}`);

Deno.test({
  name: "spoofed initiations from a client's address do not lock that client out",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    let lab: Lab | null = null;
    let work: string | null = null;
    let server: LabProcess | null = null;
    let failure: unknown = null;
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      work = await Deno.makeTempDir({ prefix: `${PREFIX}-` });
      const keyDir = await fixtureKeyDir(work);
      server = await startOurServer(lab.serverNs, {
        keyDir,
        port: 42424,
        keyPort: 42425,
        hostIp: lab.serverAddr,
      });
      await run(lab.clientNs, ["ip", "addr", "add", `${VICTIM}/32`, "dev", "lo"]);
      await run(lab.serverNs, ["ip", "route", "add", VICTIM, "via", lab.clientAddr]);

      let spoofed = 0;
      const spoofer = generate(lab.clientNs, {
        mode: "flood",
        target: lab.serverAddr,
        port: 42424,
        sources: [VICTIM],
        rate: SPOOF_RATE,
        seconds: SPOOF_SECONDS,
      }, (line) => {
        const f = line.flood as { sent: number } | undefined;
        if (f) spoofed = f.sent;
      });
      await sleep(2500); // the address's bucket (burst 6, 3/s) is long empty by now
      let step: StepResult | null = null;
      await generate(lab.clientNs, {
        mode: "load",
        target: lab.serverAddr,
        port: 42424,
        keyPort: 42425,
        sources: [VICTIM],
        steps: [2],
        window: 1,
        drain: 2.5,
        adaptive: false,
      }, (line) => {
        if (line.step) step = line.step as StepResult;
      });
      await spoofer;
      await server.stop("SIGTERM", 10_000); // it reports its drop counters as it stops
      const drops = dropTotals(server.output());
      const victim = step as StepResult | null;
      console.log(
        `FIGURES spoof: ${spoofed} junk initiations from ${VICTIM} in ${SPOOF_SECONDS} s; ` +
          `the victim's tunnels ${victim?.answered}/${victim?.offered}, p99 ` +
          `${victim?.p99?.toFixed(0)} ms; drops ${JSON.stringify(drops)}`,
      );
      assert.ok(spoofed >= 0.9 * SPOOF_RATE * SPOOF_SECONDS, `the spoofer sent only ${spoofed}`);
      assert.ok(victim, "the victim's generator reported nothing");
      assert.equal(victim.answered, victim.offered, "the victim was locked out");
      // The spoofer's initiations were over the address's rate (3/s, burst 6), and still the
      // overdraft took them in: each one a decapsulation whose c0 opens nothing.
      const tooMany = SPOOF_RATE * SPOOF_SECONDS * 7 / 8 - (6 + 3 * SPOOF_SECONDS);
      assert.ok(
        (drops["handshake-auth"] ?? 0) + (drops["handshake-rejected"] ?? 0) >= 0.9 * tooMany,
        `the spoofed initiations were not admitted past the bucket: ${JSON.stringify(drops)}`,
      );
    } catch (e) {
      failure = e;
      console.error(logs({ server: server?.output() }, 60));
    }
    const td = new Teardown();
    await td.attempt("stop server", () => server?.stop("SIGTERM", 10_000));
    if (lab) await td.attempt("destroy lab", () => destroyLab(lab!));
    if (work) await td.attempt("work dir", () => Deno.remove(work!, { recursive: true }));
    td.finish(failure);
  },
});
