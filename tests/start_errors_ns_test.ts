// What a user sees when a daemon cannot start: with its UDP port taken, the reason on stderr (for
// the client it comes from the worker, which binds the port), exit status 1, and nothing left
// behind (no TUN device, no runtime directory); a second client while one runs, on its interface
// or another, on its DNS queue or another, is refused before it touches the first's DNS queue rule
// or control socket, and its last line says it changed nothing; a SIGKILLed client's rule is
// removed by the next client on its queue only, an older build's unnumbered one by the next client
// once nobody holds its queue; of two clients started together on different queues exactly one
// runs, and a SIGKILLed one blocks nobody; a client stopped the moment it is ready, and a server
// stopped the moment it serves or while it starts, stop cleanly; a --runtime-dir a client did not
// make is refused unchanged, a client's leftover used. In a lab namespace, with the daemons' own
// narrow permissions; needs root.

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  isAlive,
  type Lab,
  type LabProcess,
  notRootReason,
  run,
  sleep,
  spawn,
} from "./lab/netns.ts";
import {
  cacheDependencies,
  clientPermissions,
  denoEnv,
  ensurePrivsepUser,
  fixtureKeyDir,
  ourServerArgv,
  pqconnectArgv,
  procIds,
  serverPermissions,
  startOurClient,
  startOurServer,
  statusPermissions,
  tunDevices,
} from "./helpers/lab_util.ts";

const PREFIX = "pqts-ste";
const skip = notRootReason();
if (skip) console.log(`start_errors_ns_test: skipped, ${skip}`);

/** Holds UDP `port` on every address in `ns` until stopped. */
async function holdPort(ns: string, port: number): Promise<LabProcess> {
  const holder = spawn(ns, [
    "python3",
    "-c",
    `import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n` +
    `s.bind(("0.0.0.0",${port}))\nprint("holding",flush=True)\ntime.sleep(120)`,
  ], { name: `udp ${port} holder` });
  await holder.waitFor("holding", 10_000);
  return holder;
}

/** A lab test: a fresh lab and a work directory (readable by the daemons' user); what `defer`
 * registers is stopped at the end, before the lab goes. */
function labTest(
  name: string,
  body: (lab: Lab, work: string, defer: (stop: () => Promise<unknown>) => void) => Promise<void>,
): void {
  Deno.test({
    name,
    ignore: skip !== null,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      let lab: Lab | null = null;
      let work: string | null = null;
      const stops: (() => Promise<unknown>)[] = [];
      try {
        await cacheDependencies();
        await ensurePrivsepUser();
        lab = await createLab({ prefix: PREFIX });
        work = await Deno.makeTempDir({ prefix: `${PREFIX}-` });
        await Deno.chmod(work, 0o755); // the client's worker, not root, reaches its socket there
        await body(lab, work, (stop) => stops.push(stop));
      } finally {
        for (const stop of stops.reverse()) await stop().catch(() => {});
        if (lab) await destroyLab(lab);
        if (work) await Deno.remove(work, { recursive: true }).catch(() => {});
      }
    },
  });
}

/** `pqconnect ARGS` in `ns` with the permissions given, to its end. */
function pqconnectIn(ns: string, permissions: string[], args: string[]) {
  return run(ns, pqconnectArgv(permissions, args), {
    env: denoEnv(),
    check: false,
    timeoutMs: 60_000,
  });
}

/** The lines of the namespace's firewall that carry our DNS queue rule (nftables or iptables). */
async function queueRules(ns: string): Promise<string[]> {
  const nft = await run(ns, ["nft", "list", "ruleset"], { check: false });
  const ipt = await run(ns, ["iptables", "-w", "-t", "mangle", "-S"], { check: false });
  return `${nft.stdout}\n${ipt.stdout}`.split("\n").filter((l) => /queue|NFQUEUE/.test(l));
}

labTest(
  "a daemon whose UDP port is taken says so and exits 1, leaving nothing behind",
  async (lab, work, defer) => {
    const keyDir = await fixtureKeyDir(work);
    const serverHolder = await holdPort(lab.serverNs, 42424);
    defer(() => serverHolder.stop());
    const server = await pqconnectIn(lab.serverNs, serverPermissions(keyDir), [
      "server",
      "-d",
      keyDir,
    ]);
    assert.equal(server.code, 1, server.stderr);
    assert.match(
      server.stderr,
      /pqconnect server: bind\(0\.0\.0\.0:42424\): Address already in use/,
    );
    assert.deepEqual(await tunDevices(lab.serverNs), [], "the server's TUN device is gone");

    const runtimeDir = `${work}/run`;
    const clientHolder = await holdPort(lab.clientNs, 42423);
    defer(() => clientHolder.stop());
    const client = await pqconnectIn(lab.clientNs, clientPermissions(runtimeDir), [
      "client",
      "--runtime-dir",
      runtimeDir,
    ]);
    assert.equal(client.code, 1, client.stderr);
    // The worker's own reason, then the supervisor's summary.
    assert.match(client.stderr, /error: bind\(0\.0\.0\.0:42423\): Address already in use/);
    assert.match(client.stderr, /the client worker did not start/);
    // Its last line names what it had made, the interface, not a rule or socket it never had.
    assert.match(client.stderr, /pqconnect-client info: not started; interface removed again\n/);
    assert.doesNotMatch(client.stderr, /stopped;/);
    assert.deepEqual(await tunDevices(lab.clientNs), [], "the client's TUN device is gone");
    await assert.rejects(Deno.stat(runtimeDir), Deno.errors.NotFound);
  },
);

/** The last line of a client refused beside a running one (as a refusal's message says). */
const CHANGED_NOTHING = /pqconnect-client info: not started; nothing was changed\n/;

/**
 * A client runs; a second one is started with `extra` options and must fail with `refusal`,
 * leaving the first one's DNS queue rule and interface as they were, and must not say it removed
 * anything. Returns the runtime dir and the second's stderr.
 */
async function secondClientRefused(
  lab: Lab,
  work: string,
  defer: (stop: () => Promise<unknown>) => void,
  extra: string[],
  refusal: RegExp,
): Promise<{ runtimeDir: string; stderr: string }> {
  const runtimeDir = `${work}/run`;
  const first = await startOurClient(lab.clientNs, runtimeDir);
  defer(() => first.process.stop("SIGTERM", 10_000));
  const rules = await queueRules(lab.clientNs);
  assert.ok(rules.length > 0, "the first client's DNS queue rule");

  const second = await pqconnectIn(lab.clientNs, clientPermissions(runtimeDir), [
    "client",
    "--runtime-dir",
    runtimeDir,
    ...extra,
  ]);
  assert.equal(second.code, 1, second.stderr);
  assert.match(second.stderr, refusal);
  assert.doesNotMatch(second.stderr, /removed/);
  assert.deepEqual(await queueRules(lab.clientNs), rules, "the first client's rule stays");
  assert.deepEqual(await tunDevices(lab.clientNs), ["pqccli0"]);
  assert.ok(first.process.running, "the first client still runs");
  return { runtimeDir, stderr: second.stderr };
}

labTest(
  "a second client on another interface is refused before it touches the running one's rule",
  async (lab, work, defer) => {
    const { stderr } = await secondClientRefused(
      lab,
      work,
      defer,
      ["--interface", "pqccli1"],
      /DNS queue 4242 is bound by another process: is another pqconnect/,
    );
    assert.match(stderr, CHANGED_NOTHING);
  },
);

labTest(
  "a second client is refused and leaves the running one's rule, socket and interface",
  async (lab, work, defer) => {
    const { runtimeDir } = await secondClientRefused(
      lab,
      work,
      defer,
      [],
      /interface pqccli0 already exists: is another pqconnect client/,
    );
    const status = await pqconnectIn(lab.clientNs, statusPermissions(runtimeDir), [
      "status",
      "--runtime-dir",
      runtimeDir,
    ]);
    assert.equal(status.code, 0, `the first client's control socket answers: ${status.stderr}`);
    assert.match(status.stdout, /^pqccli0 10\.43\.0\.1: 0 server\(s\)/);
  },
);

/** The names our DNS queue rules carry in the namespace's firewall (nftables tables, iptables
 * comments), one per table or rule, sorted. */
async function ruleTags(ns: string): Promise<string[]> {
  const nft = await run(ns, ["nft", "list", "tables"], { check: false });
  const ipt = await Promise.all(
    ["mangle", "filter"].map((t) => run(ns, ["iptables", "-w", "-t", t, "-S"], { check: false })),
  );
  const text = [nft.stdout, ...ipt.map((r) => r.stdout)].join("\n");
  return [...text.matchAll(/pqconnect-ts-q\d+/g)].map((m) => m[0]).sort();
}

/** The options of a client on DNS queue 4243 beside the default one (4242 on pqccli0). */
function queueBOptions(): string[] {
  return ["--queue", "4243", "--interface", "pqccli1", "--port", "42433", "--addr", "10.44.0.1"];
}

labTest(
  "a second client on another DNS queue is refused: both would edit every answer",
  async (lab, work, defer) => {
    const { runtimeDir, stderr } = await secondClientRefused(
      lab,
      work,
      defer,
      queueBOptions(),
      /another pqconnect client runs with DNS queue 4242: two clients would both edit every DNS answer\. Stop it first \(nothing was changed\)/,
    );
    assert.match(stderr, CHANGED_NOTHING);
    assert.ok((await ruleTags(lab.clientNs)).every((t) => t === "pqconnect-ts-q4242"));
    const first = await pqconnectIn(lab.clientNs, statusPermissions(runtimeDir), [
      "status",
      "--runtime-dir",
      runtimeDir,
    ]);
    assert.equal(first.code, 0, first.stderr);
  },
);

labTest(
  "a crashed client's rule is left to the next client on its own queue, which removes it",
  async (lab, work, defer) => {
    // A client on queue 4243 dies without a word: its rule stays (its bypass lets DNS pass).
    const runB = `${work}/run-b`;
    const crashed = await startOurClient(lab.clientNs, runB, queueBOptions());
    defer(() => crashed.process.stop("SIGKILL", 5000));
    const tagsOfB = await ruleTags(lab.clientNs);
    assert.ok(tagsOfB.length > 0 && tagsOfB.every((t) => t === "pqconnect-ts-q4243"), `${tagsOfB}`);
    await crashed.process.stop("SIGKILL", 5000, true);
    for (let i = 0; i < 50 && isAlive(crashed.workerPid); i++) await sleep(100);
    assert.ok(!isAlive(crashed.workerPid), "the crashed client's worker follows it");
    assert.deepEqual(await ruleTags(lab.clientNs), tagsOfB, "a SIGKILL leaves the rule");

    // A client on the default queue 4242 is not refused (nobody holds 4243) and leaves that rule.
    const runA = `${work}/run-a`;
    const a = await startOurClient(lab.clientNs, runA);
    defer(() => a.process.stop("SIGTERM", 10_000));
    assert.match(
      a.process.output(),
      /DNS queue rule pqconnect-ts-q4243 was left by a client that did not stop cleanly; the next client with --queue 4243 removes it/,
    );
    const both = await ruleTags(lab.clientNs);
    assert.deepEqual(both.filter((t) => t.endsWith("q4243")), tagsOfB, "4243's rule untouched");
    assert.ok(both.some((t) => t.endsWith("q4242")), "4242's own rule");
    const aExit = await a.process.stop("SIGTERM", 10_000, true);
    assert.equal(aExit.code, 0, a.process.output());
    assert.deepEqual(await ruleTags(lab.clientNs), tagsOfB, "only its own rule went with it");

    // The next client on 4243 removes its queue's leftover, and its own rule at exit.
    const b = await startOurClient(lab.clientNs, runB, queueBOptions());
    defer(() => b.process.stop("SIGTERM", 10_000));
    assert.match(b.process.output(), /removed [12] DNS queue rule\(s\) left by an earlier run/);
    assert.deepEqual(await ruleTags(lab.clientNs), tagsOfB, "one rule set of 4243, not two");
    const bExit = await b.process.stop("SIGTERM", 10_000, true);
    assert.equal(bExit.code, 0, b.process.output());
    assert.deepEqual(await ruleTags(lab.clientNs), [], "no rule left");
    assert.deepEqual(await tunDevices(lab.clientNs), [], "no interface left");
    await assert.rejects(Deno.stat(runA), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(runB), Deno.errors.NotFound);
  },
);

/** Whether process `pid` has `path` open. */
function holdsOpen(pid: number, path: string): boolean {
  for (const fd of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`) === path) return true;
    } catch { /* closed meanwhile */ }
  }
  return false;
}

const READY = /DNS answers go through queue (\d+) \(\w+\); worker pid (\d+)/;

labTest(
  "two clients started at the same moment on different queues: exactly one runs",
  async (lab, work, defer) => {
    const runtimeDir = `${work}/run`;
    const options = [[], queueBOptions()];
    for (let round = 0; round < 3; round++) {
      // Each client binds its own queue at once; neither has a rule for a second or so.
      const clients = options.map((extra, i) =>
        spawn(
          lab.clientNs,
          pqconnectArgv(clientPermissions(runtimeDir), [
            "client",
            "-v",
            "--runtime-dir",
            runtimeDir,
            ...extra,
          ]),
          { name: `client ${i} of round ${round}`, env: denoEnv() },
        )
      );
      for (const c of clients) defer(() => c.stop("SIGTERM", 10_000));
      const outcomes = await Promise.all(
        clients.map((c) => c.waitFor(READY, 60_000).then(() => "runs", () => "refused")),
      );
      assert.deepEqual(
        [...outcomes].sort(),
        ["refused", "runs"],
        clients.map((c) => c.output()).join("\n"),
      );
      const winner = clients[outcomes.indexOf("runs")];
      const loser = clients[outcomes.indexOf("refused")];
      assert.equal((await loser.status).code, 1, loser.output());
      assert.match(
        loser.output(),
        /another pqconnect client runs (with DNS queue 424[23]|\(it holds the lock on \S+\)): two clients would both edit every DNS answer\. Stop it first \(nothing was changed\)/,
      );
      assert.match(loser.output(), CHANGED_NOTHING);
      const [, queue, workerPid] = winner.output().match(READY)!;
      assert.deepEqual(await ruleTags(lab.clientNs), [
        `pqconnect-ts-q${queue}`,
        `pqconnect-ts-q${queue}`,
      ]);
      assert.equal((await tunDevices(lab.clientNs)).length, 1, "one client's interface");
      // The lock is a flock on the runtime directory: the worker holds no descriptor of it,
      // and its group may only write and search there (it cannot open the directory to lock it).
      assert.ok(!holdsOpen(Number(workerPid), runtimeDir), "the worker does not inherit the lock");
      const dir = await Deno.stat(runtimeDir);
      assert.equal(dir.uid, 0);
      assert.equal(dir.gid, procIds(Number(workerPid)).gid[0], "the worker's group");
      assert.equal(dir.mode! & 0o7777, 0o730);

      if (round < 2) {
        const exit = await winner.stop("SIGTERM", 10_000, true);
        assert.equal(exit.code, 0, winner.output());
        continue;
      }
      // A SIGKILLed client's lock dies with it: the next client on the same directory runs.
      await winner.stop("SIGKILL", 5000, true);
      for (let i = 0; i < 50 && isAlive(Number(workerPid)); i++) await sleep(100);
      assert.ok(!isAlive(Number(workerPid)), "the killed client's worker follows it");
      const next = await startOurClient(
        lab.clientNs,
        runtimeDir,
        options[outcomes.indexOf("runs")],
      );
      defer(() => next.process.stop("SIGTERM", 10_000));
      const exit = await next.process.stop("SIGTERM", 10_000, true);
      assert.equal(exit.code, 0, next.process.output());
    }
    assert.deepEqual(await queueRules(lab.clientNs), [], "no rule left");
    assert.deepEqual(await tunDevices(lab.clientNs), [], "no interface left");
    await assert.rejects(
      Deno.stat(runtimeDir),
      Deno.errors.NotFound,
      "the runtime directory (the lock) gone",
    );
  },
);

labTest(
  "a client stopped the moment it says it is ready removes its rule and exits 0",
  async (lab, work, defer) => {
    // As a service manager's stop right after the start: before the supervisor handled signals
    // from its start, about every other such SIGTERM met the default action (exit 143, the queue
    // rule left behind).
    const runtimeDir = `${work}/run`;
    for (let round = 0; round < 5; round++) {
      const client = await startOurClient(lab.clientNs, runtimeDir);
      defer(() => client.process.stop("SIGKILL", 5000));
      const exit = await client.process.stop("SIGTERM", 10_000, true);
      assert.equal(exit.code, 0, `round ${round}: ${client.process.output()}`);
      assert.match(
        client.process.output(),
        /stopped; interface, queue rule and control socket removed/,
      );
      assert.deepEqual(await queueRules(lab.clientNs), [], `round ${round}: no rule left`);
      assert.deepEqual(await tunDevices(lab.clientNs), [], `round ${round}: no interface left`);
    }
    await assert.rejects(Deno.stat(runtimeDir), Deno.errors.NotFound);
  },
);

/** Adds the rule an older build wrote for `queue` (iptables, the bare `pqconnect-ts` tag). */
async function addLegacyRule(ns: string, queue: number, proto: "udp" | "tcp"): Promise<void> {
  await run(ns, [
    "iptables",
    "-w",
    "-t",
    "mangle",
    "-I",
    "INPUT",
    ...["-p", proto, "--sport", "53", "-m", "conntrack", "--ctstate", "ESTABLISHED"],
    ...["-m", "comment", "--comment", "pqconnect-ts", "-j", "NFQUEUE"],
    ...["--queue-num", String(queue), "--queue-bypass"],
  ]);
}

/** The namespace's rules with the older builds' unnumbered tag, as `PROTO QUEUE`, sorted. */
async function legacyRules(ns: string): Promise<string[]> {
  const ipt = await run(ns, ["iptables", "-w", "-t", "mangle", "-S", "INPUT"], { check: false });
  return ipt.stdout.split("\n")
    .filter((l) => / --comment pqconnect-ts /.test(l))
    .map((l) => `${/-p (\w+)/.exec(l)?.[1]} ${/--queue-num (\d+)/.exec(l)?.[1]}`)
    .sort();
}

labTest(
  "an older build's unnumbered rule goes once no running client holds its queue",
  async (lab, work, defer) => {
    // A client runs on 4243; rules an older build tagged `pqconnect-ts` name 4243 and 4242.
    const runB = `${work}/run-b`;
    const b = await startOurClient(lab.clientNs, runB, queueBOptions());
    defer(() => b.process.stop("SIGTERM", 10_000));
    await addLegacyRule(lab.clientNs, 4243, "udp");
    await addLegacyRule(lab.clientNs, 4242, "tcp");
    const legacy = ["tcp 4242", "udp 4243"];
    assert.deepEqual(await legacyRules(lab.clientNs), legacy);

    // 4243 is held: a client on 4242 is refused as beside any running client, touching nothing.
    const runA = `${work}/run-a`;
    const refused = await pqconnectIn(lab.clientNs, clientPermissions(runA), [
      "client",
      "--runtime-dir",
      runA,
    ]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /another pqconnect client runs with DNS queue 4243/);
    assert.match(refused.stderr, CHANGED_NOTHING);
    assert.deepEqual(await legacyRules(lab.clientNs), legacy, "nothing was changed");

    // Once 4243 is let go, the next client removes both: its own queue's and the unheld one's.
    const bExit = await b.process.stop("SIGTERM", 10_000, true);
    assert.equal(bExit.code, 0, b.process.output());
    assert.deepEqual(await legacyRules(lab.clientNs), legacy, "a client removes only its own");
    const a = await startOurClient(lab.clientNs, runA);
    defer(() => a.process.stop("SIGTERM", 10_000));
    assert.match(a.process.output(), /removed 1 DNS queue rule\(s\) left by an earlier run/);
    assert.match(
      a.process.output(),
      /removed 1 DNS queue rule\(s\) of queue 4243 tagged pqconnect-ts by an older build; no process holds that queue/,
    );
    assert.deepEqual(await legacyRules(lab.clientNs), []);
    assert.ok((await ruleTags(lab.clientNs)).every((t) => t === "pqconnect-ts-q4242"));
    const aExit = await a.process.stop("SIGTERM", 10_000, true);
    assert.equal(aExit.code, 0, a.process.output());
    assert.deepEqual(await queueRules(lab.clientNs), [], "no rule left");
  },
);

labTest(
  "a second server on the same interface is refused; the running one goes on",
  async (lab, work, defer) => {
    const keyDir = await fixtureKeyDir(work);
    const first = await startOurServer(lab.serverNs, {
      keyDir,
      port: 42424,
      keyPort: 42425,
      hostIp: lab.serverAddr,
    });
    defer(() => first.stop("SIGTERM", 10_000));
    const second = await pqconnectIn(lab.serverNs, serverPermissions(keyDir), [
      "server",
      "-d",
      keyDir,
      "-p",
      "5000",
      "-k",
      "5001",
    ]);
    assert.equal(second.code, 1, second.stderr);
    assert.match(second.stderr, /interface pqcserv0 already exists: is another pqconnect server/);
    assert.deepEqual(await tunDevices(lab.serverNs), ["pqcserv0"]);
    assert.ok(first.running, "the first server still runs");
  },
);

labTest(
  "a server stopped the moment it serves, or while it starts, removes its interface and exits 0",
  async (lab, work, defer) => {
    // As a service manager's stop right after the start: the server's signal handling, made after
    // its serving line, let such a SIGTERM meet the default action (exit 143), as the client's did.
    const keyDir = await fixtureKeyDir(work);
    const opts = { keyDir, port: 42424, keyPort: 42425, hostIp: lab.serverAddr };
    for (let round = 0; round < 5; round++) {
      const server = await startOurServer(lab.serverNs, opts);
      defer(() => server.stop("SIGKILL", 5000));
      const exit = await server.stop("SIGTERM", 10_000, true);
      assert.equal(exit.code, 0, `round ${round}: ${server.output()}`);
      assert.match(server.output(), /stopped after 0 handshakes; pqcserv0 removed/);
      assert.deepEqual(await tunDevices(lab.serverNs), [], `round ${round}: no interface left`);
    }
    // Stopped on its first line, it is still setting up (keys, interface, crypto workers): the
    // start ends through the clean-up, before it serves.
    for (let round = 0; round < 3; round++) {
      const server = spawn(lab.serverNs, ourServerArgv(opts), {
        name: `pqconnect server@${lab.serverNs}`,
        env: denoEnv(),
      });
      defer(() => server.stop("SIGKILL", 5000));
      await server.waitFor(/AEAD backend: /, 60_000);
      const exit = await server.stop("SIGTERM", 10_000, true);
      assert.equal(exit.code, 0, `start round ${round}: ${server.output()}`);
      assert.match(server.output(), /stopped while starting; pqcserv0 removed/);
      assert.doesNotMatch(server.output(), /serving pq1/);
      assert.deepEqual(await tunDevices(lab.serverNs), [], `start round ${round}: no interface`);
    }
  },
);

/** The group of the client's worker (user pqconnect), as `id` says. */
async function workerGid(): Promise<number> {
  return Number((await run(null, ["id", "-g", "pqconnect"])).stdout.trim());
}

/** Owner, group, mode and entries of `path` (not following a symbolic link). */
function shape(path: string): string {
  const s = Deno.lstatSync(path);
  const entries = s.isDirectory ? [...Deno.readDirSync(path)].map((e) => e.name).sort() : [];
  return `${s.uid}:${s.gid} 0${(s.mode! & 0o7777).toString(8)} [${entries.join(",")}]`;
}

labTest(
  "a --runtime-dir that a client did not make is refused before anything changes; a leftover is used",
  async (lab, work, defer) => {
    // The supervisor hands its runtime directory to the worker's group, sets its mode and
    // removes it at exit: a typo like --runtime-dir /etc must not do that to /etc.
    const gid = await workerGid();
    const etc = `${work}/etc`; // a directory with other things in it
    Deno.mkdirSync(etc, { mode: 0o755 });
    Deno.writeTextFileSync(`${etc}/passwd`, "root:x:0:0::/root:/bin/sh\n");
    const empty = `${work}/empty`; // empty, but nobody's runtime directory
    Deno.mkdirSync(empty, { mode: 0o755 });
    const link = `${work}/link`; // a symbolic link to a client's leftover
    const target = `${work}/target`;
    Deno.mkdirSync(target);
    Deno.chownSync(target, 0, gid);
    Deno.chmodSync(target, 0o730);
    Deno.symlinkSync(target, link);
    const crowded = `${work}/crowded`; // a client's shape, with something else in it
    Deno.mkdirSync(crowded);
    Deno.chownSync(crowded, 0, gid);
    Deno.chmodSync(crowded, 0o730);
    Deno.writeTextFileSync(`${crowded}/notes`, "");
    const cases: [string, RegExp][] = [
      [etc, /its group is gid 0, not the worker's/],
      [empty, /its group is gid 0, not the worker's/],
      [link, /it is a symbolic link/],
      [crowded, /it holds what no client put there \(notes\)/],
    ];
    for (const [dir, reason] of cases) {
      const before = shape(dir);
      const r = await pqconnectIn(lab.clientNs, clientPermissions(dir), [
        "client",
        "--runtime-dir",
        dir,
      ]);
      assert.equal(r.code, 1, `${dir}: ${r.stderr}`);
      // One line says why, with the daemon's prefix, as main.ts prints a failed start.
      const said = r.stderr.split("\n").filter((l) => l.startsWith("pqconnect client: "));
      assert.equal(said.length, 1, r.stderr);
      assert.ok(
        said[0].startsWith(
          `pqconnect client: --runtime-dir ${dir} exists and is not one a pqconnect client made (`,
        ),
        said[0],
      );
      assert.match(said[0], reason);
      assert.match(r.stderr, CHANGED_NOTHING);
      assert.equal(shape(dir), before, `${dir} is as it was`);
      assert.deepEqual(await queueRules(lab.clientNs), [], `${dir}: no rule`);
      assert.deepEqual(await tunDevices(lab.clientNs), [], `${dir}: no interface`);
    }
    assert.equal(shape(target), `0:${gid} 0730 []`, "the link's target is as it was");

    // A client's leftover (killed before its clean-up: root's, the worker's group, 0730, a stale
    // control socket in it) is used, and removed at the end as a fresh one is.
    const left = `${work}/left`;
    Deno.mkdirSync(left);
    await run(null, [
      "python3",
      "-c",
      `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(`${left}/client.sock`)})`,
    ]);
    Deno.chownSync(left, 0, gid);
    Deno.chmodSync(left, 0o730);
    const client = await startOurClient(lab.clientNs, left);
    defer(() => client.process.stop("SIGKILL", 5000));
    const exit = await client.process.stop("SIGTERM", 10_000, true);
    assert.equal(exit.code, 0, client.process.output());
    await assert.rejects(Deno.stat(left), Deno.errors.NotFound);
  },
);
