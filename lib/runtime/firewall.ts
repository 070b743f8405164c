// The firewall rules that send DNS answers (UDP and TCP from port 53) to our NFQUEUE.
//
// Only datagrams of flows conntrack already knows (state established): a datagram from port 53
// that starts a flow is not queued at all, so an off-path sender cannot feed the worker records
// (issue 9). Both directions are queued, on purpose. A sender that forges the resolver's address
// can create the entry for a client port before the client uses it; the client's query then
// travels in that entry's reply direction and the genuine answer in its original direction.
// Queueing only the reply direction would let such an answer reach the application unedited,
// protection silently off; queueing both costs only that a peer this host has answered (a flow
// the other side opened from its port 53) can feed the worker, whose tables are bounded and
// which sends nothing for records that answer no question.
//
// Where: the input hook. Answers to this machine's own lookups are locally delivered packets,
// so they traverse input; forwarded traffic (if the host routes for others) does not, and
// input runs after IP reassembly, so a fragmented answer reaches the queue whole. A local
// caching resolver (systemd-resolved, dnsmasq on 127.0.0.x) is covered too: both its
// upstream answer and its reply to the application arrive through input (the latter on lo),
// and the second one already carries the internal address and passes unchanged.
//
// Priority: mangle (-150), before the host's filter rules. A packet we accept is reinjected
// and continues through the later input chains, so the host firewall still judges every
// answer. With iptables the rule therefore goes into the mangle table rather than filter:
// NFQUEUE ends a chain's traversal, and at the top of filter/INPUT it would let DNS answers
// skip the administrator's rules.
//
// Both variants use queue bypass: with no process bound to the queue the kernel accepts the
// packets, so DNS keeps working when we die.
//
// Each queue's rules are its own: the nftables table and the iptables comment carry the queue
// number (`pqconnect-ts-q4242`). A client binds its queue before it looks at the rules and
// installs its rule after, and removes the rule before it lets the queue go; so while a rule of
// queue N exists, either the client that bound N runs, or it died (SIGKILL) and the kernel let N
// go. At start-up a client, holding its own queue, removes only its own queue's rules: leftovers
// by that reasoning (`removeStaleRules`). Another queue's rules are never touched here: the
// client that owns them may be starting or running (`otherQueueRules` lets the caller decide).

import { TOOL_DIRS } from "./permissions.ts";

/** What every rule of ours is named after; its queue's rules are `ruleTag(queueNum)`. */
export const RULE_TAG = "pqconnect-ts";
const NFT_CHAIN = "dns-answers";
const IPTABLES_TABLES = ["mangle", "filter"] as const;

export type RuleHandle =
  | { backend: "nft"; nft: string; table: string; queueNum: number }
  | {
    backend: "iptables";
    iptables: string;
    table: (typeof IPTABLES_TABLES)[number];
    rules: string[][];
    queueNum: number;
  };

/** A firewall tool failed; carries what it printed. */
export class FirewallError extends Error {
  constructor(
    readonly tool: string,
    readonly args: string[],
    readonly code: number,
    readonly stderr: string,
  ) {
    super(`${tool} ${args.join(" ")} failed (exit ${code}): ${stderr.trim() || "(no output)"}`);
    this.name = "FirewallError";
  }
}

/** Absolute path of a tool in the system directories, or null. */
export function findTool(name: string): string | null {
  for (const dir of TOOL_DIRS) {
    const path = `${dir}/${name}`;
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not there
    }
  }
  return null;
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(tool: string, args: string[], stdin?: string): Promise<RunResult> {
  const child = new Deno.Command(tool, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    // A stable, unlocalized environment: we parse the output.
    clearEnv: true,
    env: { PATH: TOOL_DIRS.join(":"), LC_ALL: "C" },
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function runOk(tool: string, args: string[], stdin?: string): Promise<string> {
  const r = await run(tool, args, stdin);
  if (r.code !== 0) throw new FirewallError(tool, args, r.code, r.stderr);
  return r.stdout;
}

function checkQueueNum(queueNum: number): void {
  if (!Number.isInteger(queueNum) || queueNum < 0 || queueNum > 0xffff) {
    throw new RangeError(`bad queue number ${queueNum}`);
  }
}

/** The nftables table name and iptables comment of queue `queueNum`'s rules. */
export function ruleTag(queueNum: number): string {
  checkQueueNum(queueNum);
  return `${RULE_TAG}-q${queueNum}`;
}

/** The queue number a table name or comment of ours names, or null for anything else. */
export function queueOfTag(tag: string): number | null {
  const prefix = `${RULE_TAG}-q`;
  const digits = tag.startsWith(prefix) ? tag.slice(prefix.length) : "";
  if (!/^(0|[1-9][0-9]{0,4})$/.test(digits)) return null;
  const n = Number(digits);
  return n <= 0xffff ? n : null;
}

export function nftScript(queueNum: number): string {
  // Creating then deleting the table first makes the load replace any stale copy; the file
  // is applied as one transaction, so a failure leaves nothing behind.
  const table = ruleTag(queueNum);
  return [
    `table ip ${table} {}`,
    `delete table ip ${table}`,
    `table ip ${table} {`,
    `  chain ${NFT_CHAIN} {`,
    `    type filter hook input priority mangle; policy accept;`,
    `    udp sport 53 ct state established queue num ${queueNum} bypass`,
    `    tcp sport 53 ct state established queue num ${queueNum} bypass`,
    `  }`,
    `}`,
    "",
  ].join("\n");
}

/** One rule per transport: DNS answers over UDP, and over TCP (large answers, `dig +tcp`). */
export function iptablesRules(queueNum: number): string[][] {
  return (["udp", "tcp"] as const).map((proto) => [
    "INPUT",
    "-p",
    proto,
    "--sport",
    "53",
    "-m",
    "conntrack",
    "--ctstate",
    "ESTABLISHED",
    "-m",
    "comment",
    "--comment",
    ruleTag(queueNum),
    "-j",
    "NFQUEUE",
    "--queue-num",
    String(queueNum),
    "--queue-bypass",
  ]);
}

export interface InstallOptions {
  /** Skip nftables (for testing the fallback, or when it is known to lack `queue`). */
  skipNft?: boolean;
}

/**
 * Installs the rule queueing incoming DNS answers to `queueNum`: nftables in its own table if
 * the kernel has the queue expression, otherwise iptables. Throws FirewallError (with every
 * attempt's stderr) when neither works.
 */
export async function installDnsQueueRule(
  queueNum: number,
  opts: InstallOptions = {},
): Promise<RuleHandle> {
  checkQueueNum(queueNum);
  const failures: string[] = [];
  const nft = findTool("nft");
  if (nft && !opts.skipNft) {
    try {
      await runOk(nft, ["-f", "-"], nftScript(queueNum));
      return { backend: "nft", nft, table: ruleTag(queueNum), queueNum };
    } catch (e) {
      // Typically "Could not process rule: No such file or directory": no nft_queue in the
      // kernel. iptables' NFQUEUE target is a different kernel module and may still work.
      failures.push((e as Error).message);
    }
  } else if (!nft) {
    failures.push("nft: not installed");
  }
  const iptables = findTool("iptables");
  if (!iptables) {
    failures.push("iptables: not installed");
  } else {
    for (const table of IPTABLES_TABLES) {
      const rules = iptablesRules(queueNum);
      const added: string[][] = [];
      try {
        for (const rule of rules) {
          await runOk(iptables, ["-w", "-t", table, "-I", ...rule]);
          added.push(rule);
        }
        return { backend: "iptables", iptables, table, rules, queueNum };
      } catch (e) {
        failures.push((e as Error).message);
        // All or nothing: a half-installed pair would queue one transport only.
        for (const rule of added) {
          await run(iptables, ["-w", "-t", table, "-D", ...rule]);
        }
      }
    }
  }
  throw new Error(`cannot install the DNS queue rule:\n  ${failures.join("\n  ")}`);
}

/** Removes the rules `installDnsQueueRule` returned. Throws FirewallError on failure. */
export async function removeDnsQueueRule(handle: RuleHandle): Promise<void> {
  if (handle.backend === "nft") {
    await runOk(handle.nft, ["delete", "table", "ip", handle.table]);
  } else {
    for (const rule of handle.rules) {
      await runOk(handle.iptables, ["-w", "-t", handle.table, "-D", ...rule]);
    }
  }
}

/** Splits one line of `iptables -S` output into arguments (it double-quotes some). */
export function splitIptablesLine(line: string): string[] {
  const out: string[] = [];
  let cur = "";
  let inToken = false;
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === "\\" && i + 1 < line.length) cur += line[++i];
      else if (ch === '"') quoted = false;
      else cur += ch;
    } else if (ch === '"') {
      quoted = true;
      inToken = true;
    } else if (ch === " " || ch === "\t") {
      if (inToken) out.push(cur);
      cur = "";
      inToken = false;
    } else {
      cur += ch;
      inToken = true;
    }
  }
  if (inToken) out.push(cur);
  return out;
}

/** The queue named by the comment of `-S` arguments, or null when the rule is not ours. */
function queueOfRule(args: string[]): number | null {
  for (let i = 0; i + 1 < args.length; i++) {
    if (args[i] === "--comment") {
      const q = queueOfTag(args[i + 1]);
      if (q !== null) return q;
    }
  }
  return null;
}

/** One installed rule set of ours, as found in the firewall. */
export type FoundRule =
  | { backend: "nft"; nft: string; table: string; queueNum: number }
  | {
    backend: "iptables";
    iptables: string;
    table: (typeof IPTABLES_TABLES)[number];
    args: string[];
    queueNum: number;
  };

/**
 * Every rule of ours in the firewall: nftables tables and iptables rules (mangle or filter
 * INPUT) named after a queue. Missing tools or tables are not errors.
 */
export async function findOurRules(): Promise<FoundRule[]> {
  const found: FoundRule[] = [];
  const nft = findTool("nft");
  if (nft) {
    const r = await run(nft, ["list", "tables", "ip"]);
    for (const line of r.code === 0 ? r.stdout.split("\n") : []) {
      const table = /^table ip (\S+)$/.exec(line.trim())?.[1];
      const queueNum = table === undefined ? null : queueOfTag(table);
      if (queueNum !== null) found.push({ backend: "nft", nft, table: table!, queueNum });
    }
  }
  const iptables = findTool("iptables");
  if (iptables) {
    for (const table of IPTABLES_TABLES) {
      const r = await run(iptables, ["-w", "-t", table, "-S", "INPUT"]);
      if (r.code !== 0) continue; // table absent in this kernel/namespace
      for (const line of r.stdout.split("\n")) {
        const args = splitIptablesLine(line);
        const queueNum = args[0] === "-A" ? queueOfRule(args) : null;
        if (queueNum !== null) {
          found.push({ backend: "iptables", iptables, table, args: args.slice(1), queueNum });
        }
      }
    }
  }
  return found;
}

/**
 * Removes the rules of `queueNum` an earlier run left: call it only while holding that queue,
 * which proves their owner gone. Returns how many it removed; other queues' rules stay.
 */
export async function removeStaleRules(queueNum: number): Promise<number> {
  checkQueueNum(queueNum);
  let removed = 0;
  for (const rule of await findOurRules()) {
    if (rule.queueNum !== queueNum) continue;
    if (rule.backend === "nft") {
      await runOk(rule.nft, ["delete", "table", "ip", rule.table]);
    } else {
      await runOk(rule.iptables, ["-w", "-t", rule.table, "-D", ...rule.args]);
    }
    removed++;
  }
  return removed;
}

/** The queues other than `queueNum` that rules of ours send DNS answers to, each once. */
export async function otherQueueRules(queueNum: number): Promise<number[]> {
  const queues = new Set<number>();
  for (const rule of await findOurRules()) {
    if (rule.queueNum !== queueNum) queues.add(rule.queueNum);
  }
  return [...queues].sort((a, b) => a - b);
}
