// Two-namespace test lab: a server and a client namespace joined by a veth pair, plus helpers to
// run commands inside them. Everything lives in namespaces with fixed, caller-chosen names so a
// crashed run can be cleaned up by the next one. Nothing is ever configured in the root namespace.

const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export interface RunOptions {
  /** Kill the command (SIGKILL) after this many milliseconds. Default 30 s. */
  timeoutMs?: number;
  /** Text written to the command's standard input. */
  stdin?: string;
  /** Throw when the command fails or times out. Default true. */
  check?: boolean;
  /** Extra environment variables. */
  env?: Record<string, string>;
}

export interface RunResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export class CommandError extends Error {
  constructor(readonly argv: string[], readonly result: RunResult) {
    const why = result.timedOut ? "timed out" : `exited with ${result.code}`;
    super(`${argv.join(" ")} ${why}\n${result.stderr.trim()}\n${result.stdout.trim()}`.trim());
    this.name = "CommandError";
  }
}

/** argv for running `cmd` inside namespace `ns` (or directly when ns is null). */
export function nsArgv(ns: string | null, cmd: string[]): string[] {
  if (cmd.length === 0) throw new Error("empty command");
  return ns === null ? [...cmd] : ["ip", "netns", "exec", ns, ...cmd];
}

function commandFor(argv: string[], env: Record<string, string> | undefined, stdin: boolean) {
  return new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    // A fixed PATH keeps commands reproducible whatever shell started the tests.
    env: { PATH, LANG: "C.UTF-8", ...env },
    clearEnv: true,
  });
}

/** Runs a command to completion inside `ns` (null: the current namespace). */
export async function run(
  ns: string | null,
  cmd: string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  const argv = nsArgv(ns, cmd);
  const child = commandFor(argv, opts.env, opts.stdin !== undefined).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, opts.timeoutMs ?? 30_000);
  try {
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(opts.stdin));
      await w.close();
    }
    const out = await child.output();
    const dec = new TextDecoder();
    const result: RunResult = {
      code: out.code,
      signal: out.signal,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      timedOut,
    };
    if ((opts.check ?? true) && (result.code !== 0 || timedOut)) {
      throw new CommandError(argv, result);
    }
    return result;
  } finally {
    clearTimeout(timer);
  }
}

export interface SpawnOptions {
  /** A short label used in error messages. */
  name?: string;
  env?: Record<string, string>;
  /** Captured output is trimmed to its last this-many characters. Default 4 MiB. */
  maxLogChars?: number;
}

/** A long-running process inside a namespace whose output is captured for diagnostics. */
export class LabProcess {
  readonly name: string;
  readonly pid: number;
  readonly argv: string[];
  readonly status: Promise<Deno.CommandStatus>;
  #child: Deno.ChildProcess;
  #log = "";
  #maxLog: number;
  #exited: Deno.CommandStatus | null = null;
  #waiters = new Set<() => void>();
  #pumps: Promise<void>[];
  #readers: ReadableStreamDefaultReader<Uint8Array>[] = [];

  constructor(argv: string[], opts: SpawnOptions) {
    this.argv = argv;
    this.name = opts.name ?? argv.slice(argv[0] === "ip" ? 4 : 0).join(" ");
    this.#maxLog = opts.maxLogChars ?? 4 * 1024 * 1024;
    this.#child = commandFor(argv, opts.env, false).spawn();
    this.pid = this.#child.pid;
    this.#pumps = [this.#pump(this.#child.stdout), this.#pump(this.#child.stderr)];
    this.status = this.#child.status.then(async (s) => {
      // Output may still be in flight when the process ends; let it land first. Not forever:
      // forked children that outlive their parent keep the pipes open.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.allSettled(this.#pumps),
        new Promise((r) => timer = setTimeout(r, 500)),
      ]);
      clearTimeout(timer);
      this.#exited = s;
      this.#notify();
      return s;
    });
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    const reader = stream.getReader();
    this.#readers.push(reader);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.#log += dec.decode(value, { stream: true });
        if (this.#log.length > this.#maxLog) this.#log = this.#log.slice(-this.#maxLog);
        this.#notify();
      }
    } catch { /* cancelled by releaseOutput */ }
  }

  /** Stops reading the output pipes. Needed when forked children that outlived the process
   * still hold them open: pending reads would keep Deno's event loop alive. */
  async releaseOutput(): Promise<void> {
    await Promise.allSettled(this.#readers.map((r) => r.cancel()));
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }

  get running(): boolean {
    return this.#exited === null;
  }

  get exitStatus(): Deno.CommandStatus | null {
    return this.#exited;
  }

  /** Everything the process wrote so far (stdout and stderr interleaved). */
  output(): string {
    return this.#log;
  }

  /**
   * Resolves with the first match of `pattern` in the output; rejects on timeout or when the
   * process exits without producing it. `from` skips output that was already there.
   */
  waitFor(pattern: RegExp | string, timeoutMs: number, from = 0): Promise<string> {
    const test = (): string | null => {
      const text = this.#log.slice(from);
      if (typeof pattern === "string") return text.includes(pattern) ? pattern : null;
      const m = text.match(pattern);
      return m ? m[0] : null;
    };
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = test();
        if (hit !== null) {
          done();
          resolve(hit);
        } else if (this.#exited) {
          done();
          reject(
            new Error(
              `${this.name} exited (${this.#exited.code}) before printing ${pattern}\n` +
                tail(this.#log),
            ),
          );
        }
      };
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: no ${pattern} within ${timeoutMs} ms\n${tail(this.#log)}`));
      }, timeoutMs);
      this.#waiters.add(check);
      check();
    });
  }

  /** Sends `signal`; escalates to SIGKILL after `graceMs`. Returns the exit status. Unless
   * `keepOutput`, the output pipes are released afterwards (see releaseOutput). */
  async stop(
    signal: Deno.Signal = "SIGTERM",
    graceMs = 5000,
    keepOutput = false,
  ): Promise<Deno.CommandStatus> {
    if (!this.#exited) {
      try {
        this.#child.kill(signal);
      } catch { /* exited meanwhile */ }
    }
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* exited meanwhile */ }
    }, graceMs);
    try {
      return await this.status;
    } finally {
      clearTimeout(timer);
      if (!keepOutput) await this.releaseOutput();
    }
  }
}

/** Starts a long-running command inside `ns`. `ip netns exec` and `chroot` exec the target, so
 * the returned pid is the target program itself. */
export function spawn(ns: string | null, cmd: string[], opts: SpawnOptions = {}): LabProcess {
  return new LabProcess(nsArgv(ns, cmd), opts);
}

/** The last lines of a log, for error messages. */
export function tail(text: string, lines = 60): string {
  const all = text.trimEnd().split("\n");
  return all.slice(-lines).join("\n");
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Returns a reason to skip privileged tests, or null when running as root. */
export function notRootReason(): string | null {
  return Deno.uid() === 0 ? null : `needs root (uid is ${Deno.uid()})`;
}

// ---- processes -------------------------------------------------------------------------------

function parentOf(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(rest[1]);
  } catch {
    return null;
  }
}

/** All live descendants of `pid` (children, grandchildren, ...). */
export function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const p = parentOf(Number(e.name));
    if (p !== null) parent.set(Number(e.name), p);
  }
  const out: number[] = [];
  const frontier = [pid];
  while (frontier.length) {
    const cur = frontier.pop()!;
    for (const [child, p] of parent) {
      if (p === cur) {
        out.push(child);
        frontier.push(child);
      }
    }
  }
  return out;
}

export function isAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    const s = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return s.slice(s.lastIndexOf(")") + 2, s.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

function signalPid(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(pid, sig);
  } catch { /* gone already */ }
}

/** SIGTERM to each pid, SIGKILL to whatever is left after `graceMs`. */
export async function terminatePids(pids: number[], graceMs = 3000): Promise<void> {
  const live = pids.filter(isAlive);
  if (!live.length) return;
  for (const p of live) signalPid(p, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && live.some(isAlive)) await sleep(50);
  for (const p of live.filter(isAlive)) signalPid(p, "SIGKILL");
  const hard = Date.now() + 2000;
  while (Date.now() < hard && live.some(isAlive)) await sleep(20);
}

// ---- namespaces ------------------------------------------------------------------------------

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$/;

export async function listNamespaces(): Promise<string[]> {
  const r = await run(null, ["ip", "netns", "list"]);
  return r.stdout.split("\n").map((l) => l.split(" ")[0]).filter((l) => l.length > 0);
}

export async function namespacePids(ns: string): Promise<number[]> {
  const r = await run(null, ["ip", "netns", "pids", ns], { check: false });
  if (r.code !== 0) return [];
  return r.stdout.split(/\s+/).filter((s) => s).map(Number);
}

/** Removes a namespace and everything an earlier run left behind in it: its processes, the
 * namespace itself and /etc/netns/<name>. Safe to call when nothing exists. */
export async function removeNamespace(ns: string): Promise<void> {
  if (!NAME_RE.test(ns)) throw new Error(`bad namespace name ${ns}`);
  if ((await listNamespaces()).includes(ns)) {
    await terminatePids(await namespacePids(ns));
    for (let i = 0; i < 20; i++) {
      const r = await run(null, ["ip", "netns", "del", ns], { check: false });
      if (r.code === 0 || !(await listNamespaces()).includes(ns)) break;
      await sleep(100);
    }
  }
  await Deno.remove(`/etc/netns/${ns}`, { recursive: true }).catch(() => {});
}

// ---- the lab ---------------------------------------------------------------------------------

export interface LabConfig {
  /** Namespaces are `<prefix>-srv` and `<prefix>-cli`. */
  prefix: string;
  /** Server side of the veth link (default 198.18.0.1). Must lie in 198.18.0.0/15. */
  serverAddr?: string;
  /** Client side of the veth link (default 198.18.0.2). Must lie in 198.18.0.0/15. */
  clientAddr?: string;
  /** Prefix length of the veth link (default 24). */
  prefixLen?: number;
  /** Name server written to both namespaces' resolv.conf (default: the server address). */
  dnsServer?: string;
}

export interface Lab {
  prefix: string;
  serverNs: string;
  clientNs: string;
  serverAddr: string;
  clientAddr: string;
  prefixLen: number;
  dnsServer: string;
  /** Interface names inside the namespaces. */
  serverIf: string;
  clientIf: string;
}

export function labNamespaces(prefix: string): { serverNs: string; clientNs: string } {
  return { serverNs: `${prefix}-srv`, clientNs: `${prefix}-cli` };
}

function ipv4ToInt(addr: string): number {
  const parts = addr.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new Error(`not an IPv4 address: ${addr}`);
  }
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

/** True for addresses in the benchmarking range 198.18.0.0/15, the only one the lab uses. */
export function inBenchmarkRange(addr: string): boolean {
  return (ipv4ToInt(addr) & 0xfffe0000) >>> 0 === ipv4ToInt("198.18.0.0");
}

/**
 * Builds the two namespaces, first removing any leftovers with the same names. The veth pair
 * is created directly inside the namespaces so no interface ever appears in the root one.
 */
export async function createLab(cfg: LabConfig): Promise<Lab> {
  const { serverNs, clientNs } = labNamespaces(cfg.prefix);
  if (!NAME_RE.test(serverNs) || !NAME_RE.test(clientNs)) {
    throw new Error(`bad lab prefix ${cfg.prefix}`);
  }
  const lab: Lab = {
    prefix: cfg.prefix,
    serverNs,
    clientNs,
    serverAddr: cfg.serverAddr ?? "198.18.0.1",
    clientAddr: cfg.clientAddr ?? "198.18.0.2",
    prefixLen: cfg.prefixLen ?? 24,
    dnsServer: cfg.dnsServer ?? cfg.serverAddr ?? "198.18.0.1",
    serverIf: "veth-srv",
    clientIf: "veth-cli",
  };
  for (const a of [lab.serverAddr, lab.clientAddr, lab.dnsServer]) {
    if (!inBenchmarkRange(a)) throw new Error(`${a} is outside 198.18.0.0/15`);
  }
  if (lab.prefixLen < 15 || lab.prefixLen > 30) throw new Error("prefixLen must be 15..30");

  await destroyLab(cfg.prefix);
  try {
    for (const ns of [serverNs, clientNs]) {
      await run(null, ["ip", "netns", "add", ns]);
      await run(null, ["ip", "-n", ns, "link", "set", "lo", "up"]);
      await Deno.mkdir(`/etc/netns/${ns}`, { recursive: true });
      await Deno.writeTextFile(`/etc/netns/${ns}/resolv.conf`, `nameserver ${lab.dnsServer}\n`);
    }
    await run(null, [
      "ip",
      "-n",
      serverNs,
      "link",
      "add",
      lab.serverIf,
      "type",
      "veth",
      "peer",
      "name",
      lab.clientIf,
      "netns",
      clientNs,
    ]);
    const sides: [string, string, string][] = [
      [serverNs, lab.serverIf, lab.serverAddr],
      [clientNs, lab.clientIf, lab.clientAddr],
    ];
    for (const [ns, dev, addr] of sides) {
      await run(null, ["ip", "-n", ns, "addr", "add", `${addr}/${lab.prefixLen}`, "dev", dev]);
      await run(null, ["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    // Wait for the link (and duplicate address detection on IPv6) to settle.
    for (let i = 0; i < 50; i++) {
      const r = await run(clientNs, ["ping", "-c", "1", "-W", "1", lab.serverAddr], {
        check: false,
      });
      if (r.code === 0) break;
      if (i === 49) throw new Error(`veth link ${lab.clientAddr} -> ${lab.serverAddr} stays down`);
      await sleep(100);
    }
  } catch (e) {
    await destroyLab(cfg.prefix);
    throw e;
  }
  return lab;
}

/** Removes the lab's namespaces, their processes and /etc/netns entries (also after a crash). */
export async function destroyLab(labOrPrefix: Lab | string): Promise<void> {
  const prefix = typeof labOrPrefix === "string" ? labOrPrefix : labOrPrefix.prefix;
  const { serverNs, clientNs } = labNamespaces(prefix);
  // Client first: its processes may hold state about the server, never the other way round.
  await removeNamespace(clientNs);
  await removeNamespace(serverNs);
}

/** What is still left of a lab: namespaces, /etc/netns dirs. Empty when clean. */
export async function labLeftovers(prefix: string): Promise<string[]> {
  const { serverNs, clientNs } = labNamespaces(prefix);
  const left: string[] = [];
  const present = await listNamespaces();
  for (const ns of [serverNs, clientNs]) {
    if (present.includes(ns)) left.push(`namespace ${ns}`);
    try {
      await Deno.stat(`/etc/netns/${ns}`);
      left.push(`/etc/netns/${ns}`);
    } catch { /* absent, good */ }
  }
  return left;
}
