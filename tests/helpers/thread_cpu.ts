// Where a machine's cores go between two moments, thread by thread: the load generator takes a
// sample as its send window opens and one as it closes, of its own threads, of every thread of
// the server's process tree and of the kernel's softirq threads, and /proc/stat for the rest.
// On a 2-core machine shared by the server and its generator, this tells how much of the
// overload step measured the server, and how much the generator and the kernel.
//
// Units: shares of one core over the interval. Task times come from /proc/PID/task/TID/stat
// (utime and stime, USER_HZ ticks). This kernel accounts softirq time by ticks, to the thread
// it interrupted: a thread's sys includes the softirqs that ran on it, and /proc/stat's softirq
// counts them again, so it is reported beside the groups, not added to them. "Waited" is the
// time a group's threads were ready but had no CPU (the run queue, /proc/.../schedstat): how
// much the threads starved each other.

/** One group of threads: whose (`owner`) and which (`role`), with its user and system time. */
export interface ThreadGroupCpu {
  owner: string;
  role: string;
  threads: number;
  user: number;
  sys: number;
  /** Time its threads were ready to run but waited for a CPU (summed: may exceed 1). */
  wait: number;
}

export interface CpuAccount {
  seconds: number;
  /** Cores of the machine. */
  cores: number;
  groups: ThreadGroupCpu[];
  /** Busy time of the machine no group accounts for: other processes, softirq on idle CPUs. */
  rest: number;
  idle: number;
  /** Time the hypervisor gave to other guests. */
  steal: number;
  /** /proc/stat's system, irq and softirq: machine-wide, partly inside the groups' sys. */
  machineSys: number;
  machineSoftirq: number;
}

/** Processes to watch: `owner` names them in the account, `pid` is the root of a tree. */
export interface Watched {
  owner: string;
  pid: number;
}

interface TaskTicks {
  key: string;
  owner: string;
  role: string;
  user: number;
  sys: number;
  /** Nanoseconds spent runnable on a run queue (/proc/PID/task/TID/schedstat, second field). */
  waitNs: number;
}

export interface CpuSample {
  at: number;
  /** /proc/stat's first line: user nice system idle iowait irq softirq steal (ticks). */
  machine: number[];
  tasks: Map<number, TaskTicks>;
}

function readText(path: string): string | null {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return null; // gone meanwhile
  }
}

/** Fields after the ")" that ends the command name: [0] is the state, [11] utime, [12] stime. */
function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

function commOf(stat: string): string {
  return stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
}

/** Every live process of the tree under each watched root, and the kernel's softirq threads. */
export function resolveTasks(watched: Watched[]): { owner: string; root: boolean; pid: number }[] {
  const children = new Map<number, number[]>();
  const softirqd: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const stat = readText(`/proc/${e.name}/stat`);
    if (stat === null) continue;
    if (commOf(stat).startsWith("ksoftirqd/")) softirqd.push(Number(e.name));
    const ppid = Number(statFields(stat)[1]);
    children.set(ppid, [...(children.get(ppid) ?? []), Number(e.name)]);
  }
  const out: { owner: string; root: boolean; pid: number }[] = [];
  for (const w of watched) {
    const tree = [w.pid];
    for (let i = 0; i < tree.length; i++) tree.push(...(children.get(tree[i]) ?? []));
    tree.forEach((pid, i) => out.push({ owner: w.owner, root: i === 0, pid }));
  }
  for (const pid of softirqd) out.push({ owner: "kernel", root: false, pid });
  return out;
}

/** What a thread does, from its place and name (Deno names threads; comm keeps 15 bytes). */
function roleOf(owner: string, root: boolean, pid: number, tid: number, comm: string): string {
  if (owner === "kernel") return "ksoftirqd";
  if (!root) return "child processes";
  if (tid === pid) return "main";
  // Deno names a Web Worker's thread worker-N (the server's crypto workers), V8's platform
  // threads do its concurrent and parallel GC (and background compiles), tokio's do Deno's I/O.
  if (comm.startsWith("worker-")) return "workers";
  if (comm.startsWith("V8 ")) return "V8 helpers (GC)";
  if (comm.startsWith("tokio-runtime")) return "tokio";
  return "other threads";
}

export function sampleCpu(tasks: { owner: string; root: boolean; pid: number }[]): CpuSample {
  const line = (readText("/proc/stat") ?? "").split("\n")[0].trim().split(/\s+/).slice(1);
  const machine = line.slice(0, 8).map(Number);
  const out = new Map<number, TaskTicks>();
  for (const t of tasks) {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(`/proc/${t.pid}/task`)];
    } catch {
      continue;
    }
    for (const e of entries) {
      const stat = readText(`/proc/${t.pid}/task/${e.name}/stat`);
      if (stat === null) continue;
      const f = statFields(stat);
      const tid = Number(e.name);
      const role = roleOf(t.owner, t.root, t.pid, tid, commOf(stat));
      const sched = readText(`/proc/${t.pid}/task/${e.name}/schedstat`)?.split(" ");
      out.set(tid, {
        key: `${t.owner}\0${role}`,
        owner: t.owner,
        role,
        user: Number(f[11]),
        sys: Number(f[12]),
        waitNs: Number(sched?.[1] ?? 0),
      });
    }
  }
  return { at: performance.now() / 1000, machine, tasks: out };
}

/** The account between two samples. A thread born in between counts from zero. */
export function cpuAccount(a: CpuSample, b: CpuSample, cores: number): CpuAccount {
  const d = b.machine.map((v, i) => v - (a.machine[i] ?? 0));
  const total = d.reduce((x, y) => x + y, 0);
  const perCore = Math.max(1, total) / cores; // ticks of one core in the interval
  const seconds = Math.max(1e-3, b.at - a.at);
  const groups = new Map<string, ThreadGroupCpu>();
  let watched = 0;
  for (const [tid, t] of b.tasks) {
    const before = a.tasks.get(tid);
    const user = t.user - (before?.user ?? 0);
    const sys = t.sys - (before?.sys ?? 0);
    const g = groups.get(t.key) ??
      { owner: t.owner, role: t.role, threads: 0, user: 0, sys: 0, wait: 0 };
    g.threads++;
    g.user += user / perCore;
    g.sys += sys / perCore;
    g.wait += (t.waitNs - (before?.waitNs ?? 0)) / 1e9 / seconds;
    groups.set(t.key, g);
    watched += user + sys;
  }
  const [, , system, idle, iowait, irq, softirq, steal] = d;
  const busy = total - idle - iowait - steal;
  return {
    seconds,
    cores,
    groups: [...groups.values()],
    rest: Math.max(0, busy - watched) / perCore,
    idle: (idle + iowait) / perCore,
    steal: steal / perCore,
    machineSys: (system + irq + softirq) / perCore,
    machineSoftirq: (irq + softirq) / perCore,
  };
}

/** Cores of one owner's groups together. */
export function ownerCores(a: CpuAccount, owner: string): number {
  return a.groups.filter((g) => g.owner === owner).reduce((n, g) => n + g.user + g.sys, 0);
}

/**
 * The machine's cores: /proc/stat's per-CPU lines. Not navigator.hardwareConcurrency, which
 * counts only the CPUs this process may run on (one, for a generator under taskset), while
 * /proc/stat's totals cover them all.
 */
export function machineCoreCount(): number {
  const text = readText("/proc/stat") ?? "";
  return Math.max(1, text.split("\n").filter((l) => /^cpu\d+ /.test(l)).length);
}

/** One line per owner: each group's cores (with its system share), then the machine's rest. */
export function formatAccount(a: CpuAccount): string[] {
  const owners = [...new Set(a.groups.map((g) => g.owner))];
  const lines = owners.map((o) => {
    const parts = a.groups.filter((g) => g.owner === o && g.user + g.sys >= 0.005).map((g) =>
      `${g.role}${g.threads > 1 ? ` ×${g.threads}` : ""} ${(g.user + g.sys).toFixed(2)}` +
      (g.sys >= 0.005 ? ` (sys ${g.sys.toFixed(2)})` : "") +
      (g.wait >= 0.005 ? ` [waited ${g.wait.toFixed(2)}]` : "")
    );
    return `${o} ${ownerCores(a, o).toFixed(2)}: ${parts.join(", ") || "—"}`;
  });
  lines.push(
    `rest of the machine ${a.rest.toFixed(2)}, idle ${a.idle.toFixed(2)}, steal ${
      a.steal.toFixed(2)
    }; machine-wide kernel ${a.machineSys.toFixed(2)} of which irq+softirq ${
      a.machineSoftirq.toFixed(2)
    } (mostly inside the threads' sys above)`,
  );
  return lines;
}
