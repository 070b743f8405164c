// The DNS queue end to end, as root, in two network namespaces of our own:
//   pqts-nfq-a  198.18.9.1/24  dnsmasq serving lab.test (one pq1 server, one plain one)
//   pqts-nfq-b  198.18.9.2/24  tests/helpers/nfq_dns_client.ts: NFQUEUE + firewall rule +
//                              DNS rewriting, while dig asks questions
// It runs with the other namespace tests in the root-only (--allow-all) run of `deno task test`;
// without root, dnsmasq, dig or iptables it skips, saying why. The parsing of our firewall rules
// is tested in tests/nfqueue_test.ts, in the unit run.

import assert from "node:assert/strict";
import { LIBC_CANDIDATES } from "../ffi/libc.ts";
import { formatPq1Label } from "../lib/core/names.ts";
import { RULE_TAG, ruleTag } from "../lib/runtime/firewall.ts";
import { DNSMASQ, type RunningDnsmasq, startDnsmasq } from "./helpers/dnsmasq.ts";
import { notRootReason } from "./lab/netns.ts";

const NS_A = "pqts-nfq-a";
const NS_B = "pqts-nfq-b";
const VETH_A = "pqts-nfq-va";
const VETH_B = "pqts-nfq-vb";
const SERVER = "198.18.9.1";
const QUEUE = 7;
const OTHER_QUEUE = 8;
const KEY_HASH = new Uint8Array(32).map((_, i) => (i * 53 + 5) & 0xff);
const PQ_NAME = `${formatPq1Label(KEY_HASH, { crypto: 42424, key: 42425 })}.lab.test`;

const IP = "/usr/sbin/ip";
const HELPER = new URL("./helpers/nfq_dns_client.ts", import.meta.url).pathname;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function sh(cmd: string[], allowFail = false): Promise<string> {
  const out = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  if (!out.success && !allowFail) {
    throw new Error(`${cmd.join(" ")}: exit ${out.code}: ${dec.decode(out.stderr)}`);
  }
  return dec.decode(out.stdout) + (allowFail ? dec.decode(out.stderr) : "");
}

function inB(...cmd: string[]): string[] {
  return [IP, "netns", "exec", NS_B, ...cmd];
}

async function teardown(): Promise<void> {
  // Deleting the namespaces removes the veth pair and every rule inside them.
  await sh([IP, "netns", "del", NS_A], true);
  await sh([IP, "netns", "del", NS_B], true);
}

async function setup(): Promise<void> {
  await teardown();
  await sh([IP, "netns", "add", NS_A]);
  await sh([IP, "netns", "add", NS_B]);
  await sh([
    IP,
    "-n",
    NS_A,
    "link",
    "add",
    VETH_A,
    "type",
    "veth",
    "peer",
    "name",
    VETH_B,
    "netns",
    NS_B,
  ]);
  await sh([IP, "-n", NS_A, "addr", "add", `${SERVER}/24`, "dev", VETH_A]);
  await sh([IP, "-n", NS_B, "addr", "add", "198.18.9.2/24", "dev", VETH_B]);
  for (const [ns, dev] of [[NS_A, VETH_A], [NS_B, VETH_B]]) {
    await sh([IP, "-n", ns, "link", "set", "lo", "up"]);
    await sh([IP, "-n", ns, "link", "set", dev, "up"]);
  }
}

interface Dig {
  name: string;
  ttl: number;
  type: string;
  data: string;
}

async function dig(name: string, type = "A"): Promise<Dig[]> {
  const out = await sh(
    inB("/usr/bin/dig", `@${SERVER}`, name, type, "+tries=2", "+time=2", "+noall", "+answer"),
  );
  return out.trim().split("\n").filter((l) => l && !l.startsWith(";")).map((l) => {
    const [n, ttl, , t, data] = l.split(/\s+/);
    return { name: n.replace(/\.$/, ""), ttl: Number(ttl), type: t, data: data.replace(/\.$/, "") };
  });
}

/** The helper as a child process in namespace B, with its JSON lines. */
class Helper {
  readonly child: Deno.ChildProcess;
  readonly lines: unknown[] = [];
  readonly stderr: Promise<string>;
  #waiters: Array<() => void> = [];
  readonly done: Promise<void>;

  constructor(args: string[]) {
    const libc = LIBC_CANDIDATES.find(exists)!;
    this.child = new Deno.Command(IP, {
      args: [
        "netns",
        "exec",
        NS_B,
        Deno.execPath(),
        "run",
        "--quiet",
        `--allow-ffi=${libc}`,
        "--allow-run=/usr/sbin/nft,/usr/sbin/iptables,/sbin/nft,/sbin/iptables",
        "--allow-read=/usr/sbin,/sbin,/usr/bin,/bin",
        HELPER,
        ...args,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.stderr = new Response(this.child.stderr).text();
    const stdout = this.child.stdout;
    this.done = (async () => {
      let buf = "";
      const dec = new TextDecoder();
      for await (const chunk of stdout) {
        buf += dec.decode(chunk, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          this.lines.push(JSON.parse(buf.slice(0, nl)));
          buf = buf.slice(nl + 1);
          this.#waiters.splice(0).forEach((w) => w());
        }
      }
      this.#waiters.splice(0).forEach((w) => w());
    })();
  }

  async waitFor<T>(key: string, timeoutMs = 20000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines.find((l) => typeof l === "object" && l !== null && key in l);
      if (hit) return hit as T;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`helper never printed ${key}; stderr:\n${await this.stopAndStderr()}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.#waiters.push(r)),
        this.done,
        new Promise<void>((r) => (timer = setTimeout(r, left))),
      ]);
      clearTimeout(timer);
      if (!this.lines.some((l) => typeof l === "object" && l !== null && key in l)) {
        const st = await Promise.race([this.child.status, Promise.resolve(null)]);
        if (st !== null) throw new Error(`helper exited (${st.code}):\n${await this.stderr}`);
      }
    }
  }

  /** Signals the deno process itself (not `ip netns exec`, which execs into it anyway). */
  kill(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch { /* already exited */ }
  }

  async stopAndStderr(): Promise<string> {
    this.kill("SIGKILL");
    await this.child.status;
    await this.done;
    return await this.stderr;
  }
}

async function rulesInB(): Promise<string> {
  const parts = [
    await sh(inB("/usr/sbin/iptables", "-w", "-t", "mangle", "-S", "INPUT"), true),
    await sh(inB("/usr/sbin/iptables", "-w", "-t", "filter", "-S", "INPUT"), true),
    await sh(inB("/usr/sbin/nft", "list", "ruleset"), true),
  ];
  return parts.join("\n");
}

function pqAnswer(records: Dig[]): Dig | undefined {
  return records.find((r) => r.type === "A" && r.name.toLowerCase() === PQ_NAME);
}

const missing = [IP, "/usr/bin/dig", "/usr/sbin/iptables"].filter((p) => !exists(p));
const skipReason = notRootReason() ??
  (!DNSMASQ ? "dnsmasq is not installed" : missing.length ? `missing ${missing.join(", ")}` : null);
if (skipReason !== null) console.log(`nfqueue_ns_test: skipped, ${skipReason}`);

Deno.test({
  name: "NFQUEUE: dig in a namespace sees pq1 answers rewritten, plain ones untouched",
  ignore: skipReason !== null,
  sanitizeResources: false,
  async fn(t) {
    let dns: RunningDnsmasq | null = null;
    const helpers: Helper[] = [];
    try {
      await setup();
      dns = await startDnsmasq({
        listen: SERVER,
        records: [
          "local-ttl=300",
          `host-record=${PQ_NAME},${SERVER},2001:db8::1`,
          `cname=www.lab.test,${PQ_NAME}`,
          `host-record=plain.lab.test,${SERVER},2001:db8::2`,
        ],
      }, NS_A);

      // Without our process: the zone answers with the real addresses.
      const before = await dig("www.lab.test");
      assert.equal(pqAnswer(before)?.data, SERVER);

      // Leftovers of imagined crashed runs, one per backend, on our queue and on another one;
      // serve removes its own queue's only: the other queue's owner may be running.
      const leftovers = async (queueNum: number) => {
        await sh(inB("/usr/sbin/nft", "add", "table", "ip", ruleTag(queueNum)));
        await sh(
          inB(
            "/usr/sbin/iptables",
            "-w",
            "-t",
            "filter",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--sport",
            "53",
            "-m",
            "comment",
            "--comment",
            ruleTag(queueNum),
            "-j",
            "ACCEPT",
          ),
        );
      };
      await leftovers(QUEUE);
      await leftovers(OTHER_QUEUE);

      const h = new Helper(["serve", String(QUEUE)]);
      helpers.push(h);
      const ready = await h.waitFor<{ backend: string; staleRemoved: number }>("ready");
      console.log(`rule installed with ${ready.backend}`);
      assert.ok(["nft", "iptables"].includes(ready.backend));
      assert.equal(ready.staleRemoved, 2);
      assert.match(await rulesInB(), new RegExp(`${ruleTag(QUEUE)}|queue num ${QUEUE}`));
      const other = (await rulesInB()).split("\n").filter((l) => l.includes(ruleTag(OTHER_QUEUE)));
      assert.equal(other.length, 2, "the other queue's table and rule stay");
      const c = new Helper(["cleanup", String(OTHER_QUEUE)]);
      helpers.push(c);
      assert.equal((await c.waitFor<{ removed: number }>("removed")).removed, 2);
      assert.equal((await c.child.status).code, 0);
      assert.doesNotMatch(await rulesInB(), new RegExp(ruleTag(OTHER_QUEUE)));

      await t.step("pq1 name via CNAME: internal address, TTL 0", async () => {
        const got = await dig("www.lab.test");
        assert.equal(got[0].type, "CNAME");
        assert.equal(got[0].data.toLowerCase(), PQ_NAME);
        const a = pqAnswer(got);
        assert.ok(a, JSON.stringify(got));
        assert.equal(a.data, "10.43.0.2");
        assert.equal(a.ttl, 0);
        // asked again: the same internal address
        assert.equal(pqAnswer(await dig("www.lab.test"))?.data, "10.43.0.2");
      });
      await t.step("AAAA of the pq1 name neutralised in place", async () => {
        // Same length (TCP needs that): a private-use type no resolver library returns.
        const got = await dig("www.lab.test", "AAAA");
        assert.deepEqual(got.map((r) => r.type), ["CNAME", "TYPE65280"]);
        assert.ok(got.every((r) => !/2001:db8/.test(r.data)), JSON.stringify(got));
      });
      await t.step("plain name untouched", async () => {
        const got = await dig("plain.lab.test");
        assert.deepEqual(got.map((r) => [r.type, r.data, r.ttl]), [["A", SERVER, 300]]);
        const v6 = await dig("plain.lab.test", "AAAA");
        assert.deepEqual(v6.map((r) => r.data), ["2001:db8::2"]);
      });

      await t.step("SIGTERM: rule removed, stats reported", async () => {
        h.kill("SIGTERM");
        const st = await h.child.status;
        await h.done;
        assert.equal(st.code, 0, await h.stderr);
        const { stats } = await h.waitFor<
          { stats: { dns: Record<string, number>; queue: Record<string, number> } }
        >("stats");
        console.log(JSON.stringify(stats));
        assert.equal(stats.queue.kernelErrors, 0);
        assert.equal(stats.queue.malformed, 0);
        assert.equal(stats.queue.verdicts, stats.queue.received);
        assert.ok(stats.dns.rewritten >= 3, JSON.stringify(stats));
        assert.ok(stats.dns.unchanged >= 2, JSON.stringify(stats));
        assert.doesNotMatch(await rulesInB(), new RegExp(`${RULE_TAG}|queue num`));
        // and DNS works without us
        assert.equal(pqAnswer(await dig("www.lab.test"))?.data, SERVER);
      });

      await t.step("killed: bypass keeps DNS working, cleanup removes the rule", async () => {
        const k = new Helper(["serve", String(QUEUE)]);
        helpers.push(k);
        await k.waitFor("ready");
        assert.equal(pqAnswer(await dig("www.lab.test"))?.data, "10.43.0.2");
        k.kill("SIGKILL");
        await k.child.status;
        assert.match(await rulesInB(), new RegExp(`${RULE_TAG}|queue num ${QUEUE}`));
        // queue-bypass: nobody is bound, answers flow unmodified
        assert.equal(pqAnswer(await dig("www.lab.test"))?.data, SERVER);
        assert.equal((await dig("plain.lab.test"))[0]?.data, SERVER);
        const c = new Helper(["cleanup", String(QUEUE)]);
        helpers.push(c);
        const { removed } = await c.waitFor<{ removed: number }>("removed");
        assert.equal(removed, 2, "the UDP and the TCP rule");
        assert.equal((await c.child.status).code, 0);
        assert.doesNotMatch(await rulesInB(), new RegExp(`${RULE_TAG}|queue num`));
      });
    } finally {
      for (const h of helpers) await h.stopAndStderr().catch(() => "");
      await dns?.stop();
      await teardown();
    }
  },
});
