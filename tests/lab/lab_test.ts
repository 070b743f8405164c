// Baseline for the lab harness: reference client <-> reference server through two namespaces,
// with a real DNS server announcing the server. If this passes, the harness (namespaces, DNS,
// reference root, NFQUEUE workaround, cleanup) works and can host our own implementation.

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  type Lab,
  labLeftovers,
  type LabProcess,
  namespacePids,
  notRootReason,
  run,
  spawn,
  tail,
} from "./netns.ts";
import { announcement, dig, type Dnsmasq, mergeZones, startDnsmasq } from "./dnsmasq.ts";
import {
  clientNetfilterLeftovers,
  installServerKeys,
  prepareReferenceRoot,
  type ReferenceProcess,
  releaseReferenceRoot,
  startReferenceClient,
  startReferenceServer,
} from "./reference.ts";

const PREFIX = "pqts-lab";
const HTTP_PORT = 8080;
const FIXTURES = new URL("../fixtures/", import.meta.url).pathname;
const vectors = JSON.parse(await Deno.readTextFile(`${FIXTURES}reference-vectors.json`));
const ROOT_BASE32: string = vectors.key_tree.root_base32;

const skip = notRootReason();
if (skip) console.log(`lab_test: skipped, ${skip}`);

/** A tiny HTTP server that logs the peer address of every request. */
function startHttpServer(ns: string): LabProcess {
  const code = `Deno.serve({ hostname: "0.0.0.0", port: ${HTTP_PORT},
    onListen() { console.log("LISTENING"); } }, (req, info) => {
    console.log("REQ " + info.remoteAddr.hostname + " " + new URL(req.url).pathname);
    return new Response("hello from the lab\\n");
  });`;
  return spawn(ns, [Deno.execPath(), "eval", code], {
    name: `http@${ns}`,
    env: { HOME: Deno.env.get("HOME") ?? "/root", DENO_NO_UPDATE_CHECK: "1" },
  });
}

interface CurlResult {
  code: number;
  http: string;
  seconds: number;
  remoteIp: string;
  body: string;
}

async function curl(ns: string, url: string, maxSec = 30): Promise<CurlResult> {
  const r = await run(ns, [
    "curl",
    "-sS",
    "--max-time",
    String(maxSec),
    "-w",
    "\n%{http_code} %{time_total} %{remote_ip}",
    url,
  ], { check: false, timeoutMs: (maxSec + 5) * 1000 });
  const lines = r.stdout.trimEnd().split("\n");
  const [http, secs, ip] = (lines.pop() ?? "").split(" ");
  return {
    code: r.code,
    http,
    seconds: Number(secs),
    remoteIp: ip ?? "",
    body: lines.join("\n") + r.stderr,
  };
}

async function pingRtt(ns: string, addr: string): Promise<number> {
  const r = await run(ns, ["ping", "-c", "20", "-i", "0.05", "-q", "-W", "2", addr], {
    check: false,
    timeoutMs: 20_000,
  });
  const m = r.stdout.match(/= [\d.]+\/([\d.]+)\//);
  assert.ok(m, `ping ${addr} failed:\n${r.stdout}${r.stderr}`);
  return Number(m[1]);
}

Deno.test({
  name: "lab: reference client reaches reference server through the harness",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let lab: Lab | null = null;
    let rootHeld = false;
    let dns: Dnsmasq | null = null;
    let server: ReferenceProcess | null = null;
    let client: ReferenceProcess | null = null;
    let http: LabProcess | null = null;
    let failure: unknown = null;
    const logs = () =>
      [
        `--- reference client ---\n${tail(client?.log() ?? "", 40)}`,
        `--- reference server ---\n${tail(server?.log() ?? "", 40)}`,
        `--- dnsmasq ---\n${tail(dns?.log() ?? "", 20)}`,
        `--- http ---\n${tail(http?.output() ?? "", 10)}`,
      ].join("\n");
    try {
      // The root lock first: it also serialises concurrent runs of this very test, which share
      // the namespace names.
      await prepareReferenceRoot();
      rootHeld = true;
      lab = await createLab({ prefix: PREFIX });
      await installServerKeys(FIXTURES);

      dns = await startDnsmasq({
        ns: lab.serverNs,
        listen: lab.serverAddr,
        zone: mergeZones(
          announcement({
            alias: "www",
            rootBase32: ROOT_BASE32,
            addr: lab.serverAddr,
            ports: "label",
          }),
          { hosts: [{ name: "plain.lab.test", addr: lab.serverAddr }] },
        ),
      });
      const t0 = performance.now();
      server = await startReferenceServer(lab.serverNs, { hostIp: lab.serverAddr });
      console.log(`reference server ready after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      http = startHttpServer(lab.serverNs);
      await http.waitFor("LISTENING", 30_000);
      client = await startReferenceClient(lab.clientNs, { dnsServer: lab.dnsServer });

      // First request: DNS rewrite, key download, handshake, then TCP through the tunnel.
      // The reference client sends its one handshake once and gives up on any lost step (key
      // download, ephemeral keys, initiation); only a new DNS answer makes it try again. CI saw
      // that once (2026-12-02), so a failed first request gets one more lookup, and
      // both outcomes are printed. (Our own client resends its initiation; its tests never retry.)
      let first = await curl(lab.clientNs, `http://www.lab.test:${HTTP_PORT}/`);
      if (first.http !== "200") {
        console.log(
          `${logs()}\nthe reference's first attempt failed (${first.http}): ${first.body}`,
        );
        first = await curl(lab.clientNs, `http://www.lab.test:${HTTP_PORT}/`);
      }
      // The reason last: CI shows a failure's tail.
      assert.equal(first.http, "200", `${logs()}\nfirst curl failed: ${first.body}`);
      assert.match(first.remoteIp, /^10\.43\./, `curl did not go to a tunnel address\n${logs()}`);
      assert.match(first.body, /hello from the lab/);
      const later: number[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await curl(lab.clientNs, `http://www.lab.test:${HTTP_PORT}/again`);
        assert.equal(r.http, "200", `later curl failed: ${r.body}\n${logs()}`);
        later.push(r.seconds);
      }
      const reqs = http.output().split("\n").filter((l) => l.startsWith("REQ "));
      assert.ok(
        reqs.length >= 6 && reqs.every((l) => /^REQ 10\.42\.\d+\.\d+ /.test(l)),
        `requests did not arrive through the tunnel:\n${reqs.join("\n")}\n${logs()}`,
      );
      assert.match(client.log(), /New Session Established/, logs());
      assert.match(server.log(), /Handshake succeeded/, logs());

      // DNS as the client's applications see it: the announced name maps to a tunnel address.
      const www = await dig(lab.clientNs, "www.lab.test");
      const wwwA = www.answers.filter((a) => a.type === "A");
      assert.ok(wwwA.length > 0, `no A record for www.lab.test:\n${www.raw}`);
      for (const a of wwwA) {
        assert.match(a.data, /^10\.43\./, www.raw);
        assert.equal(a.ttl, 0, www.raw);
      }
      const tunnelAddr = wwwA[0].data;

      // An ordinary name is left alone and reached directly over the veth.
      const plain = await dig(lab.clientNs, "plain.lab.test");
      assert.deepEqual(plain.answers.map((a) => a.data), [lab.serverAddr], plain.raw);
      const before = http.output().length;
      const direct = await curl(lab.clientNs, `http://plain.lab.test:${HTTP_PORT}/plain`);
      assert.equal(direct.http, "200", direct.body);
      assert.equal(direct.remoteIp, lab.serverAddr);
      await http.waitFor(`REQ ${lab.clientAddr} /plain`, 5000, before);

      const rttTunnel = await pingRtt(lab.clientNs, tunnelAddr);
      const rttPlain = await pingRtt(lab.clientNs, lab.serverAddr);
      console.log(
        `first curl ${(first.seconds * 1000).toFixed(0)} ms; later curls ` +
          later.map((s) => (s * 1000).toFixed(1)).join(", ") + " ms; ping avg " +
          `${rttTunnel.toFixed(3)} ms through the tunnel (${tunnelAddr}), ` +
          `${rttPlain.toFixed(3)} ms plain veth`,
      );
    } catch (e) {
      failure = e;
    }
    const errors: unknown[] = [];
    const attempt = async (f: () => unknown) => {
      try {
        await f();
      } catch (e) {
        errors.push(e);
      }
    };
    await attempt(() => client?.stop());
    await attempt(() => server?.stop());
    await attempt(() => http?.stop());
    await attempt(() => dns?.stop());
    if (lab) {
      const l = lab;
      await attempt(async () => {
        const nf = await clientNetfilterLeftovers(l.clientNs);
        assert.deepEqual(nf, [], "the reference client left queue rules behind");
      });
      await attempt(async () => {
        const pids = [...await namespacePids(l.clientNs), ...await namespacePids(l.serverNs)];
        assert.deepEqual(pids, [], "processes left in the lab namespaces");
      });
    }
    await attempt(() => destroyLab(PREFIX));
    await attempt(async () => assert.deepEqual(await labLeftovers(PREFIX), []));
    // Also restores the root's keys; throws if any mount it made could not be removed.
    if (rootHeld) await attempt(releaseReferenceRoot);
    // A failure of the test itself is the more useful report; cleanup problems go with it.
    if (failure) {
      for (const e of errors) console.error("cleanup:", e);
      throw failure;
    }
    if (errors.length) throw errors[0];
  },
});
