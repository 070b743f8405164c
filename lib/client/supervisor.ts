// The client's privileged supervisor. It creates what needs root — the TUN device, the DNS
// netfilter queue and its firewall rule, the runtime directory — starts the unprivileged worker
// with the TUN device and a channel, moves DNS answers between the queue and the worker without
// parsing them, and on exit removes every rule and file it made.

import type { Logger } from "../core/log.ts";
import { StderrLogger } from "../runtime/log.ts";
import { WORKER_ENV, workerFlags } from "../runtime/permissions.ts";
import { Shutdown } from "../runtime/shutdown.ts";
import {
  type FoundRule,
  installDnsQueueRule,
  otherQueueRules,
  removeDnsQueueRule,
  removeFoundRules,
  removeStaleRules,
  RULE_TAG,
  type RuleHandle,
  ruleTag,
} from "../runtime/firewall.ts";
import { decodeChannelMessage } from "./messages.ts";
import { DnsRelay, MAX_REPLACEMENT } from "./dns_relay.ts";
import { Cleanup } from "../runtime/cleanup.ts";
import { InstanceLock, RUNTIME_DIR_MODE } from "../runtime/instance_lock.ts";
import { CONTROL_SOCKET, dirFacts, foreignDirReason, isSymlink } from "../runtime/runtime_dir.ts";
import { packetLoop } from "../runtime/packet_loop.ts";
import { TickLoop } from "../runtime/tick_loop.ts";
import { openInterface } from "../runtime/interface.ts";
import { NfQueue } from "../../ffi/nfqueue.ts";
import {
  closeFd,
  killChild,
  MAX_MESSAGE,
  SeqPacketChannel,
  socketPair,
  spawnWithFds,
  tryWaitChild,
} from "../../ffi/spawn.ts";
import { lookupUser } from "../../ffi/privdrop.ts";
import { EPERM, libcPath, SysError, waitReadable } from "../../ffi/libc.ts";
import { sodiumPath } from "../../ffi/sodium.ts";
import { kemLibraryPaths } from "../../ffi/kem_native.ts";
import type { KemChoice } from "../runtime/kem_backend.ts";
import { nettlePath } from "../../ffi/nettle.ts";

export interface ClientOptions {
  port: number;
  tunAddress: string;
  prefix: number;
  interfaceName: string;
  user: string;
  mtu: number;
  queueNum: number;
  runtimeDir: string;
  precomputed: number;
  kem: KemChoice;
  /** Answer use-application-dns.net with NXDOMAIN. */
  canary: boolean;
  verbose: boolean;
  /** -H: where packets from servers are delivered (default the TUN address), as the
   * reference client's --host-ip: for a client running on a router or VM for other hosts. */
  hostAddress?: string;
}

/** The DNS relay waits on this thread for this long after the last answer or verdict (ms),
 * giving its event loop (the tick, signals) a turn every SUPERVISOR_TURN_MS meanwhile. */
const SUPERVISOR_HOT_MS = 250;
const SUPERVISOR_TURN_MS = 10;

/** An answer the worker has not judged within this time is dropped (see dns_relay.ts). */
const VERDICT_TIMEOUT_SECONDS = 2;
/** How often overdue answers and the worker's exit are looked at. */
const TICK_SECONDS = 0.25;
const READY_TIMEOUT_MS = 60_000;

export { CONTROL_SOCKET };

/** NFQUEUE `num`, or an error that says another client holds it. */
async function openQueue(num: number): Promise<NfQueue> {
  try {
    return await NfQueue.open(num);
  } catch (e) {
    if (e instanceof SysError && e.code === EPERM) {
      throw new Error(
        `DNS queue ${num} is bound by another process: is another pqconnect client running? ` +
          `Stop it first (nothing was changed)`,
      );
    }
    throw e;
  }
}

/** Whether a process holds NFQUEUE `num` (a probe: bound and let go at once when free). */
async function queueBound(num: number): Promise<boolean> {
  try {
    (await NfQueue.open(num)).close();
    return false;
  } catch (e) {
    if (e instanceof SysError && e.code === EPERM) return true;
    throw e;
  }
}

/** The refusal when another client runs; `which` names it as well as we can. */
function anotherClientRuns(which: string): Error {
  return new Error(
    `another pqconnect client runs ${which}: two clients would both edit every DNS answer. ` +
      `Stop it first (nothing was changed)`,
  );
}

/** The queues `rules` send to, each once, in order. */
function queuesOf(rules: FoundRule[]): number[] {
  return [...new Set(rules.map((r) => r.queueNum))].sort((a, b) => a - b);
}

/** The first queue of other queues' `rules` that a process holds: a running client's. */
async function runningQueue(rules: FoundRule[]): Promise<number | null> {
  for (const other of queuesOf(rules)) {
    if (await queueBound(other)) return other;
  }
  return null;
}

/**
 * Refuses to run beside a client on another queue: both rules would see every DNS answer (two
 * nftables tables on one hook each queue it; with iptables only the newest rule's queue would),
 * so two workers would edit the same answers. A rule of a queue nobody holds is a crashed
 * client's leftover (see firewall.ts): left for the next client on that queue, whose own start
 * removes it; its bypass lets answers through meanwhile. An older build's rule (unnumbered tag)
 * of such a queue is removed here, after every queue has been checked: nothing else ever would.
 * Called holding the instance lock, so no other client of ours is starting meanwhile. True when
 * it removed an older build's rules.
 */
async function refuseOtherClients(queueNum: number, log: Logger): Promise<boolean> {
  const others = await otherQueueRules(queueNum);
  const running = await runningQueue(others);
  if (running !== null) throw anotherClientRuns(`with DNS queue ${running}`);
  let removed = false;
  for (const other of queuesOf(others)) {
    const rules = others.filter((r) => r.queueNum === other);
    const legacy = rules.filter((r) => r.legacy);
    if (legacy.length > 0) {
      await removeFoundRules(legacy);
      removed = true;
      log.info(
        `removed ${legacy.length} DNS queue rule(s) of queue ${other} tagged ${RULE_TAG} by an ` +
          `older build; no process holds that queue`,
      );
    }
    if (rules.length > legacy.length) {
      log.info(
        `DNS queue rule ${ruleTag(other)} was left by a client that did not stop cleanly; ` +
          `the next client with --queue ${other} removes it`,
      );
    }
  }
  return removed;
}

/** What a run sets up and removes again at its end, in the order its last line names them. */
const SET_UP = ["interface", "queue rule", "control socket"] as const;
export type SetUp = typeof SET_UP[number];

/**
 * The supervisor's last line, saying what really happened: a client that ran stopped and removed
 * what it had set up; one that did not get that far (refused beside a running client, its worker
 * did not start) names what it set up and removed again, or says nothing was changed. A refusal
 * comes before any rule is removed; `clearedLeftovers` says an earlier run's rules were (logged
 * when it happened), so "nothing was changed" would not be true.
 */
export function lastLine(
  ran: boolean,
  setUp: ReadonlySet<SetUp>,
  clearedLeftovers: boolean,
): string {
  const names = SET_UP.filter((s) => setUp.has(s));
  const listed = names.length < 2
    ? names.join("")
    : `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
  if (ran) return `stopped; ${listed} removed`;
  if (names.length > 0) return `not started; ${listed} removed again`;
  return clearedLeftovers
    ? "not started; nothing set up (the leftover rules above stay removed)"
    : "not started; nothing was changed";
}

export async function runClient(opts: ClientOptions): Promise<number> {
  const log = new StderrLogger("pqconnect-client", opts.verbose ? "debug" : "info");
  const user = lookupUser(opts.user);
  if (user.uid === 0) throw new Error(`--user ${opts.user} is root: choose an unprivileged user`);

  const cleanup = new Cleanup(log);
  // For the last line: what this run set up (`cleanup` removes each again), and how far it got.
  const setUp = new Set<SetUp>();
  let ran = false;
  let clearedLeftovers = false;
  try {
    // Signals are handled from the start. Deno's first signal listener takes a while to install,
    // and made after the ready line, a SIGTERM sent on seeing that line (a service manager's stop,
    // a test) sometimes met the default action, leaving the queue rule behind. A stop asked for
    // while setting up ends the start through the clean-up instead.
    const shutdown = new Shutdown(log);
    cleanup.add(() => shutdown.dispose());
    const running = () => shutdown.running;
    // The queue first: bound by another process, it tells that another client runs (on another
    // interface), and nothing may be touched, least of all its DNS queue rule. Holding it shows
    // that rules of this queue are leftovers; rules of other queues belong to a running client
    // (refused) or to a crashed one (left alone).
    const queue = await openQueue(opts.queueNum);
    cleanup.add(() => queue.close());
    // A runtime directory that was there before is used only when a client made it (its
    // leftover): it is about to be handed to the worker's group and removed at exit. A symbolic
    // link is judged before the lock would follow it; the rest once the lock is held, when no
    // client is making it.
    const notOurs = (reason: string) =>
      new Error(
        `--runtime-dir ${opts.runtimeDir} exists and is not one a pqconnect client made ` +
          `(${reason}); the client would give it to group ${opts.user}, set its mode and ` +
          `remove it: name a new path, or remove it if it is a leftover (nothing was changed)`,
      );
    if (isSymlink(opts.runtimeDir)) throw notOurs("it is a symbolic link");
    // Then the lock on the runtime directory, held to the end: a client on another queue
    // started at the same moment (its rule not installed yet) is refused here rather than both
    // running. Its release removes the directory.
    const lock = InstanceLock.take(opts.runtimeDir);
    if (lock === null) {
      const other = await runningQueue(await otherQueueRules(opts.queueNum));
      throw anotherClientRuns(
        other === null ? `(it holds the lock on ${opts.runtimeDir})` : `with DNS queue ${other}`,
      );
    }
    const foreign = lock.made ? null : foreignDirReason(dirFacts(opts.runtimeDir), user.gid);
    if (foreign !== null) {
      lock.leave();
      throw notOurs(foreign);
    }
    cleanup.add(() => lock.release());
    if (await refuseOtherClients(opts.queueNum, log)) clearedLeftovers = true;
    const stale = await removeStaleRules(opts.queueNum);
    if (stale > 0) {
      clearedLeftovers = true;
      log.info(`removed ${stale} DNS queue rule(s) left by an earlier run`);
    }

    // The worker's group may put its control socket there, not open the directory (the lock).
    Deno.chownSync(opts.runtimeDir, 0, user.gid);
    Deno.chmodSync(opts.runtimeDir, RUNTIME_DIR_MODE);
    const controlPath = `${opts.runtimeDir}/${CONTROL_SOCKET}`;
    cleanup.add(() => {
      try {
        Deno.removeSync(controlPath);
      } catch { /* the worker removed it */ }
    });

    const tun = await openInterface(opts, cleanup);
    setUp.add("interface");
    const [mine, theirs] = socketPair();
    const channel = new SeqPacketChannel(mine);
    cleanup.add(() => channel.close());

    const argv = workerArgv(opts, controlPath);
    const pid = spawnWithFds(argv[0], argv, childEnv(), [[tun.fd, 3], [theirs, 4]]);
    cleanup.add(() => stopChild(pid, log));
    // The worker holds the only other copies now: if it dies, the interface goes with it.
    closeFd(theirs);
    tun.close();

    await waitReady(channel, pid, running);
    setUp.add("control socket"); // the worker serves it before it says READY
    const rule: RuleHandle = await installDnsQueueRule(opts.queueNum);
    cleanup.add(() => removeDnsQueueRule(rule));
    setUp.add("queue rule");
    ran = true;
    log.info(
      `DNS answers go through queue ${opts.queueNum} (${rule.backend}); worker pid ${pid} ` +
        `runs as ${opts.user}`,
    );

    let exitCode = 0;
    const now = () => performance.now() / 1000;
    const relay = new DnsRelay(queue, channel, now, {
      verdictSeconds: VERDICT_TIMEOUT_SECONDS,
      maxPacket: Math.min(MAX_REPLACEMENT, MAX_MESSAGE - 6),
    }, log);
    let tick = 0;
    /** The worker's exit ends the supervisor, with its status. */
    const reapWorker = () => {
      const exit = tryWaitChild(pid);
      if (!exit) return;
      exitCode = exit.code === 0 ? 0 : 1;
      shutdown.stop(
        `worker exited (${exit.signal ? `signal ${exit.signal}` : `status ${exit.code}`})`,
      );
    };
    const ticks = new TickLoop("pqconnect-client", now, () => {
      relay.dropOverdue();
      reapWorker();
      if (++tick % 60 === 0) relay.drops.report(log);
    }, TICK_SECONDS);
    await Promise.all([
      // One loop for both directions (issue 11): while answers come, it waits in a poll on
      // this thread (one wakeup per answer and per verdict, not a thread-pool wakeup and then
      // this thread's), and parks on the thread pool once DNS has been quiet for a while.
      packetLoop("pqconnect-client", running, [
        { fd: queue.fd, drain: () => (relay.relayAnswers(), 1) },
        {
          fd: channel.fd,
          drain: () => {
            if (!relay.applyVerdicts()) shutdown.stop("worker closed its channel");
            return 1;
          },
        },
      ], { hotMs: SUPERVISOR_HOT_MS, maxBlockMs: SUPERVISOR_TURN_MS }),
      ticks.run(running),
    ]);
    relay.passAll();
    relay.drops.report(log);
    return exitCode;
  } finally {
    await cleanup.run(); // the lock's release removes the runtime directory, when it is empty
    log.info(lastLine(ran, setUp, clearedLeftovers));
  }
}

async function waitReady(
  channel: SeqPacketChannel,
  pid: number,
  running: () => boolean,
): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!running()) throw new Error("asked to stop before the client worker was ready");
    if (await waitReadable(channel.fd, 250)) {
      const m = channel.tryRecv();
      if (m === null) break;
      if (m && decodeChannelMessage(m)?.type === "ready") return;
    }
    if (tryWaitChild(pid)) break;
  }
  throw new Error("the client worker did not start (see its messages above)");
}

/** True once the worker has exited (and been reaped, here or earlier: ECHILD). */
function childGone(pid: number): boolean {
  try {
    return tryWaitChild(pid) !== null;
  } catch {
    return true;
  }
}

async function stopChild(pid: number, log: Logger): Promise<void> {
  if (childGone(pid)) return;
  try {
    killChild(pid, 15);
  } catch { /* already gone */ }
  for (let i = 0; i < 50; i++) {
    if (childGone(pid)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  log.warn(`worker ${pid} did not stop in 5 s; killing it`);
  try {
    killChild(pid, 9);
  } catch { /* gone */ }
  for (let i = 0; i < 20 && !childGone(pid); i++) await new Promise((r) => setTimeout(r, 50));
}

/** The command line that runs the worker: the same program, narrower permissions. */
function workerArgv(opts: ClientOptions, controlPath: string): string[] {
  const exe = Deno.execPath();
  const args = [
    "client-worker",
    "--tun-fd=3",
    "--dns-fd=4",
    `--port=${opts.port}`,
    `--addr=${opts.tunAddress}`,
    `--mask=${opts.prefix}`,
    `--user=${opts.user}`,
    `--control=${controlPath}`,
    `--precompute=${opts.precomputed}`,
    ...(opts.hostAddress ? [`--host-ip=${opts.hostAddress}`] : []),
    `--kem=${opts.kem}`,
    ...(opts.canary ? [] : ["--no-canary"]),
    ...(opts.verbose ? ["--verbose"] : []),
  ];
  const main = new URL("../../main.ts", import.meta.url);
  if (main.protocol !== "file:" || !/\/deno$/.test(exe)) return [exe, ...args]; // compiled
  const root = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
  const ffi = [libcPath(), sodiumPath(), nettlePath(), ...kemLibraryPaths()].filter((p) =>
    p !== null
  );
  return [
    exe,
    "run",
    "--no-prompt",
    `--config=${root}/deno.json`,
    ...workerFlags(ffi, { keyDir: "", runtimeDir: opts.runtimeDir, code: root }),
    main.pathname,
    ...args,
  ];
}

function childEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of WORKER_ENV) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  env.PATH ??= "/usr/sbin:/usr/bin:/sbin:/bin";
  // The worker must not look for Deno updates: that is a DNS lookup and a connection abroad.
  env.DENO_NO_UPDATE_CHECK = "1";
  return env;
}
