// The client's guards against its own inputs (issue 9): the supervisor's check of the worker's
// replacement packets, the control socket's idle timeout and connection limit, escaping of
// names in logs and `pqconnect status`, and rate-limited log lines.

import assert from "node:assert/strict";
import { replacementProblem } from "../lib/client/dns_relay.ts";
import {
  CONTROL_IDLE_MS,
  CONTROL_MAX_CONNECTIONS,
  queryControl,
  serveControl,
} from "../lib/client/control.ts";
import { DropCounters, escapeText, type Logger, LogLimiter } from "../lib/core/log.ts";
import { DnsJobs } from "../lib/client/dns_jobs.ts";
import { DnsRewriter, type DnsRewriteResult } from "../lib/core/dns_rewrite.ts";
import { formatPq1Label, parsePq1Name } from "../lib/core/names.ts";
import { ipv4ToNumber } from "../lib/core/ip.ts";
import { maximalAnswer } from "./helpers/dns_answers.ts";
import { formatStatus } from "../lib/cli/client.ts";
import { decodeChannelMessage, encodeVerdict } from "../lib/client/messages.ts";
import { udpPacket } from "./helpers/udp_packet.ts";

function memoryLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const add = (m: string) => void lines.push(m);
  return { lines, error: add, warn: add, info: add, debug: add, debugEnabled: true };
}

Deno.test("supervisor: a replacement must be the same packet, same length and flow", () => {
  const p = udpPacket("198.18.0.53", "198.18.0.2", 53, 40000, new Uint8Array(40).fill(7));
  const original = { head: p.slice(0, 24), length: p.length };
  const edited = p.slice();
  edited[40] = 9; // the DNS message and the checksum may change
  edited[26] ^= 0xff;
  assert.equal(replacementProblem(original, edited), null);
  const cases: [string, Uint8Array][] = [
    ["longer", Uint8Array.from([...p, 0])],
    ["shorter", p.subarray(0, p.length - 1)],
    ["other destination", Object.assign(p.slice(), { 19: 3 })],
    ["other port", Object.assign(p.slice(), { 23: 1 })],
    ["other protocol", Object.assign(p.slice(), { 9: 6 })],
  ];
  for (const [what, r] of cases) assert.ok(replacementProblem(original, r) !== null, what);
  // A verdict message bigger than any packet decodes without throwing; its size is refused.
  const huge = encodeVerdict(1, new Uint8Array(70_000));
  const msg = decodeChannelMessage(huge);
  assert.equal(msg?.type, "verdict");
  if (msg?.type === "verdict") assert.ok(replacementProblem(original, msg.replacement!) !== null);
});

Deno.test("control socket: idle connections are closed, at most a few at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pqts-control-" });
  const path = `${dir}/client.sock`;
  const log = memoryLog();
  const control = serveControl(path, () => ({ servers: [] }), log);
  const idle: Deno.Conn[] = [];
  try {
    for (let i = 0; i < CONTROL_MAX_CONNECTIONS + 20; i++) {
      idle.push(await Deno.connect({ transport: "unix", path }));
    }
    // The limit: connections beyond it are closed at once (read sees end of file).
    const extra = idle[idle.length - 1];
    const t0 = performance.now();
    assert.equal(await extra.read(new Uint8Array(8)), null);
    assert.ok(performance.now() - t0 < CONTROL_IDLE_MS / 2, "refused connection lingered");
    // The idle timeout: the first connection, which never sent anything, is closed too.
    const first = idle[0];
    assert.equal(await first.read(new Uint8Array(8)), null);
    assert.ok(performance.now() - t0 <= CONTROL_IDLE_MS + 1000);
    // Once they are gone, a real request is served.
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(await queryControl(path), { servers: [] });
    assert.ok(log.lines.some((l) => /connection\(s\) refused/.test(l)), log.lines.join("\n"));
  } finally {
    for (const c of idle) {
      try {
        c.close();
      } catch { /* closed by the server */ }
    }
    control.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("names are escaped in log text and in the status table", () => {
  assert.equal(escapeText("a\x1b[31mb\nc\\d"), "a\\x1b[31mb\\x0ac\\x5cd");
  assert.equal(escapeText("x".repeat(400)).length, 301);
  const table = formatStatus({
    interface: "pqccli0",
    address: "10.43.0.1",
    servers: [{
      name: "evil\x1b]0;owned\x07.example\nFAKE ROW",
      external: "198.18.0.1",
      internal: "10.43.0.2",
      state: "up",
      tunnelId: "",
      age: null,
      lastActivity: null,
      txBytes: 0,
      rxBytes: 0,
    }],
  });
  assert.equal(table.split("\n").length, 3, table);
  const controls = [...table.replaceAll("\n", "")].filter((c) => c < " " || c === "\x7f");
  assert.deepEqual(controls, [], table);
});

Deno.test("rate-limited log lines: 4,077 events make a handful of lines", () => {
  const log = memoryLog();
  let now = 0;
  const limiter = new LogLimiter(log, () => now, 10, 10);
  for (let i = 0; i < 4077; i++) limiter.line("info", "announce", () => `record ${i}`);
  assert.equal(log.lines.length, 10);
  now = 11;
  limiter.line("info", "announce", () => "later");
  assert.deepEqual(log.lines.slice(10), ["announce: 4067 similar line(s) held back", "later"]);
});

Deno.test("DNS jobs: a maximal answer is edited in slices, with the same result", async () => {
  const name = `${formatPq1Label(new Uint8Array(32).fill(3))}.lab.test`;
  const packet = maximalAnswer(name);
  const internal = ipv4ToNumber("10.43.0.2");
  const rewriter = new DnsRewriter({ parseName: parsePq1Name, assign: () => internal });
  const whole = rewriter.process(packet);
  assert.equal(whole.action, "rewrite");
  const results: DnsRewriteResult[] = [];
  const drops = new DropCounters();
  const jobs = new DnsJobs(rewriter, (_id, r) => results.push(r), drops, undefined, {
    sliceMs: 0.05,
    maxQueued: 2,
  });
  assert.ok(jobs.add(1, packet));
  assert.ok(jobs.add(2, packet));
  assert.equal(jobs.add(3, packet), false, "a third answer does not fit the queue");
  assert.equal(drops.get("dns-jobs-full"), 1);
  jobs.slice();
  assert.equal(results.length, 0, "one short slice cannot finish a maximal answer");
  for (let i = 0; i < 2000 && results.length < 2; i++) await new Promise((r) => setTimeout(r, 1));
  assert.equal(results.length, 2);
  assert.ok(jobs.stats.deferred > 2, `only ${jobs.stats.deferred} deferred slices`);
  for (const r of results) {
    assert.equal(r.action, "rewrite");
    if (r.action === "rewrite" && whole.action === "rewrite") {
      assert.deepEqual(r.packet, whole.packet);
    }
  }
  jobs.close();
});
