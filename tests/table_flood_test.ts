// Valid handshakes that fill the server's peer table, as root, in two namespaces. Anyone can make
// valid handshakes (the server's keys are public), so a full table is an attacker's tool: every
// handshake beyond it evicts a tunnel, with a cookie. That must cost the server little (it was a
// scan of the whole table per eviction), must evict the flood's one-shot tunnels and not a busy
// one, and memory must stay bounded. Our server runs with a 256-peer table; three times, 3000
// valid handshakes from 2000 addresses come in over 5 s (12 tables' worth), each with its 0-RTT
// echo, while an established client moves TCP through its tunnel (the first two rounds warm the
// server up; the third is measured). Bounded: ~60 s.

import assert from "node:assert/strict";
import { notRootReason, sleep } from "./lab/netns.ts";
import { dropTotals, iperfMbit, memoryLevelled, rssKiB, tunnelTarget } from "./helpers/lab_util.ts";
import { TunnelLab } from "./helpers/tunnel_lab.ts";
import { addSources, generate, sourceAddresses } from "../bench/handshake_load.ts";
import type { StepResult } from "./helpers/handshake_gen.ts";

const PREFIX = "pqts-tbl";
const MAX_PEERS = 256;
/**
 * 3000 handshakes over 5 s. At 1000/s over 3 s the handshakes took a third of a slower VM's
 * capacity (~3300/s; a tenth of the VM the test was written on), and the busy tunnel kept 47-56 %
 * of its TCP there, against a margin of 50 %: the test is about evictions, not about load.
 */
const RATE = 600;
const SECONDS = 5;
const skip = notRootReason();
if (skip) console.log(`table_flood_test: skipped, ${skip}`);

Deno.test({
  name: "table flood: valid handshakes at 12× a full peer table evict idle tunnels, not a busy one",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    let t: TunnelLab | null = null;
    let failure: unknown = null;
    try {
      t = await TunnelLab.start(PREFIX, {
        serverExtra: ["--max-peers", String(MAX_PEERS)],
        http: false,
        iperf: true,
      });
      const { lab } = t;
      const server = t.server!;
      const client = t.client!;
      await addSources(lab, sourceAddresses(2000));

      // The busy client's tunnel, and which one it is in the server's log.
      const target = await tunnelTarget(lab.clientNs, "www.lab.test");
      const up = server.output().match(
        new RegExp(`tunnel ([0-9a-f]{12}) up with ${lab.clientAddr.replaceAll(".", "\\.")}:`),
      );
      assert.ok(up, `the server logged no tunnel from the client\n${server.output()}`);
      const busyTid = up[1];
      const calm = await iperfMbit(lab.clientNs, target, 3);

      // Three rounds: the first two warm a fresh server up to its working size (V8's heaps and
      // the workers' first real load add ~70 MiB whatever the table's size); the third is measured.
      const floodOnce = async () => {
        const rss = [rssKiB(server.pid)];
        let step: StepResult | null = null;
        let during = 0;
        const flood = generate(lab.clientNs, {
          mode: "load",
          target: lab.serverAddr,
          port: 42424,
          keyPort: 42425,
          sources: sourceAddresses(2000),
          steps: [RATE],
          window: SECONDS,
          drain: 2.5,
          adaptive: false,
        }, (line) => {
          if (line.step) step = line.step as StepResult;
        });
        const meanwhile = (async () => {
          await sleep(500);
          during = await iperfMbit(lab.clientNs, target, 4);
        })();
        const sampler = (async () => {
          for (let second = 0; second < 8; second++) {
            await sleep(1000);
            rss.push(rssKiB(server.pid));
          }
        })();
        await Promise.all([flood, meanwhile, sampler]);
        assert.ok(step, "the generator reported nothing");
        return { step: step as StepResult, during, rss };
      };
      // Two rounds warm it up: like tests/flood_test.ts, a fresh server reaches its working size
      // only in the second (105 → 142 → 176 MiB here), then stays there.
      const warmFirst = await floodOnce();
      const warmSecond = await floodOnce();
      const warm = { ...warmSecond, rss: [...warmFirst.rss, ...warmSecond.rss] };
      const { step: s, during: measured, rss } = await floodOnce();
      // The last warm-up round and the measured one are the same load: their mean halves the
      // noise of one 4 s iperf3 run.
      const during = (warmSecond.during + measured) / 2;
      await server.stop("SIGTERM", 10_000); // it reports its drop counters as it stops
      const out = server.output();
      // A cookie key issues at most 4096 cookies (MAX_COOKIES_PER_SLOT); past that, evicted
      // tunnels get none and start over with a new handshake.
      const withCookie = closedCount(out, /^evicted with a cookie$/);
      const evicted = closedCount(out, /^evicted/);
      // The client says so when the server hands its session back (the server's own log is
      // long under -v and kept only in part).
      const busyEvicted = /handed back our session as a cookie/.test(client.process.output()) ||
        new RegExp(`tunnel ${busyTid} \\([\\d.]+\\) closed`).test(out);
      const drops = dropTotals(out);
      const mib = (k: number) => (k / 1024).toFixed(1);
      console.log(
        `FIGURES table flood: ${s.offered} valid handshakes at ${s.offeredRate.toFixed(0)}/s ` +
          `into a ${MAX_PEERS}-peer table: ${s.answered} answered (p50 ${s.p50?.toFixed(0)} ms, ` +
          `p99 ${
            s.p99?.toFixed(0)
          } ms); over the three rounds ${evicted} tunnels evicted, ${withCookie} with a cookie; ` +
          `the busy ` +
          `tunnel ${busyEvicted ? "WAS" : "was not"} evicted; its TCP ${calm.toFixed(0)} Mbit/s ` +
          `calm, ${warmSecond.during.toFixed(0)} and ${measured.toFixed(0)} Mbit/s in the last ` +
          `two rounds (mean ${((100 * during) / calm).toFixed(0)} %); ` +
          `server RSS warming up ${warm.rss.map(mib).join(" → ")}, then ${
            rss.map(mib).join(" → ")
          } MiB; drops ${JSON.stringify(drops)}`,
      );
      assert.ok(!busyEvicted, "the busy client's tunnel was evicted");
      // Each handshake beyond the table costs an eviction: cheap, so (nearly) all are answered.
      assert.ok(s.answered >= 0.9 * s.offered, `only ${s.answered}/${s.offered} answered`);
      assert.ok(during >= 0.5 * calm, `the busy tunnel kept ${during} of ${calm} Mbit/s`);
      // 256 tunnels and 256 lingering ones at most: memory does not follow the handshakes. The
      // measured flood adds little, and less than the same load added to the fresh server.
      // Or levelled off by the round's end, when V8 settled later than the warm-up (as in
      // tests/flood_test.ts): its last 4 s no more than 2 MiB above what came before.
      assert.ok(
        memoryLevelled(warm.rss, rss),
        `RSS ${warm.rss.map(mib).join(" → ")}, then ${rss.map(mib).join(" → ")} MiB`,
      );
    } catch (e) {
      failure = e;
      if (t) console.error(t.logs(60));
    }
    if (t) await t.stop(failure);
    else if (failure) throw failure;
  },
});

/**
 * Tunnels the server's log says were closed for a reason matching `why`: one line each, up to 20
 * a second, and the rest in the once-a-second "N more tunnels closed ...: reason: n" lines.
 */
function closedCount(log: string, why: RegExp): number {
  let n = 0;
  for (const m of log.matchAll(/\) closed: (.+)$/gm)) if (why.test(m[1])) n++;
  for (const m of log.matchAll(/more tunnels closed \(not logged one by one\): (.+)$/gm)) {
    for (const part of m[1].split(", ")) {
      const [reason, count] = part.split(": ");
      if (why.test(reason)) n += Number(count);
    }
  }
  return n;
}
