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
//
// Builds before the per-queue names tagged their rules with the bare `pqconnect-ts`. They bound
// their queue before installing the rule too, so the same reasoning holds with the queue read
// from the rule itself (`queue num N`, `--queue-num N`): such a rule is found as `legacy`, and a
// client removes it when it holds that queue or nobody does (no client writes that name again,
// so none would ever claim it).

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

/** A queue number as the firewall tools print it, or null. */
function parseQueueNum(text: string | undefined): number | null {
  if (text === undefined || !/^[0-9]{1,5}$/.test(text)) return null;
  const n = Number(text);
  return n <= 0xffff ? n : null;
}

/**
 * Whose rule `-S` arguments are: the queue its comment names, or for the unnumbered tag of older
 * builds the queue its NFQUEUE target sends to (`--queue-num` absent means queue 0); null when
 * the rule is not ours.
 */
export function queueOfIptablesRule(args: string[]): { queueNum: number; legacy: boolean } | null {
  const comment = args.indexOf("--comment");
  const tag = comment < 0 ? undefined : args[comment + 1];
  if (tag === undefined) return null;
  const queueNum = queueOfTag(tag);
  if (queueNum !== null) return { queueNum, legacy: false };
  if (tag !== RULE_TAG || !args.includes("NFQUEUE")) return null;
  const num = args.indexOf("--queue-num");
  const legacyQueue = num < 0 ? 0 : parseQueueNum(args[num + 1]);
  return legacyQueue === null ? null : { queueNum: legacyQueue, legacy: true };
}

/**
 * The one queue the statements of an unnumbered (older build's) nftables table send to, from
 * `nft list table`: `queue num N` as written, or `queue flags bypass to N` as newer nft prints
 * it; a bare `queue` is queue 0. Null when the table queues nowhere or to several queues: not
 * the rule set an older build wrote, so not ours to judge.
 */
export function queueOfLegacyNftTable(listing: string): number | null {
  const queues = new Set<number | null>();
  for (const line of listing.split("\n")) {
    const statement = /\bqueue\b(.*)$/.exec(line)?.[1];
    if (statement === undefined) continue;
    const num = /\b(?:num|to)\s+(\S+)/.exec(statement)?.[1];
    queues.add(num === undefined ? 0 : parseQueueNum(num));
  }
  const [only] = queues;
  return queues.size === 1 && only !== undefined ? only : null;
}

/** One installed rule set of ours, as found in the firewall. `legacy`: tagged with the bare
 * RULE_TAG by an older build, its queue read from the rule. */
export type FoundRule =
  | { backend: "nft"; nft: string; table: string; queueNum: number; legacy: boolean }
  | {
    backend: "iptables";
    iptables: string;
    table: (typeof IPTABLES_TABLES)[number];
    args: string[];
    queueNum: number;
    legacy: boolean;
  };

/**
 * Every rule of ours in the firewall: nftables tables and iptables rules (mangle or filter
 * INPUT) named after a queue, and those of older builds named `pqconnect-ts`. Missing tools or
 * tables are not errors.
 */
export async function findOurRules(): Promise<FoundRule[]> {
  const found: FoundRule[] = [];
  const nft = findTool("nft");
  if (nft) {
    const r = await run(nft, ["list", "tables", "ip"]);
    for (const line of r.code === 0 ? r.stdout.split("\n") : []) {
      const table = /^table ip (\S+)$/.exec(line.trim())?.[1];
      if (table === undefined) continue;
      const queueNum = queueOfTag(table);
      if (queueNum !== null) found.push({ backend: "nft", nft, table, queueNum, legacy: false });
      if (table !== RULE_TAG) continue;
      const listing = await run(nft, ["list", "table", "ip", table]);
      const legacyQueue = listing.code === 0 ? queueOfLegacyNftTable(listing.stdout) : null;
      if (legacyQueue !== null) {
        found.push({ backend: "nft", nft, table, queueNum: legacyQueue, legacy: true });
      }
    }
  }
  const iptables = findTool("iptables");
  if (iptables) {
    for (const table of IPTABLES_TABLES) {
      const r = await run(iptables, ["-w", "-t", table, "-S", "INPUT"]);
      if (r.code !== 0) continue; // table absent in this kernel/namespace
      for (const line of r.stdout.split("\n")) {
        const args = splitIptablesLine(line);
        const owner = args[0] === "-A" ? queueOfIptablesRule(args) : null;
        if (owner !== null) {
          found.push({ backend: "iptables", iptables, table, args: args.slice(1), ...owner });
        }
      }
    }
  }
  return found;
}

/** Deletes rules `findOurRules` found; returns how many. Throws FirewallError on failure. */
export async function removeFoundRules(rules: FoundRule[]): Promise<number> {
  for (const rule of rules) {
    if (rule.backend === "nft") {
      await runOk(rule.nft, ["delete", "table", "ip", rule.table]);
    } else {
      await runOk(rule.iptables, ["-w", "-t", rule.table, "-D", ...rule.args]);
    }
  }
  return rules.length;
}

/**
 * Removes the rules of `queueNum` an earlier run left, an older build's included: call it only
 * while holding that queue, which proves their owner gone. Returns how many it removed; other
 * queues' rules stay.
 */
export async function removeStaleRules(queueNum: number): Promise<number> {
  checkQueueNum(queueNum);
  return await removeFoundRules((await findOurRules()).filter((r) => r.queueNum === queueNum));
}

/** Our rules that send DNS answers to queues other than `queueNum`. */
export async function otherQueueRules(queueNum: number): Promise<FoundRule[]> {
  return (await findOurRules()).filter((r) => r.queueNum !== queueNum);
}
