// A real DNS server (dnsmasq) for a test zone, running in the foreground inside a lab namespace,
// plus the helpers to write PQConnect announcements into that zone.

import { base32Encode } from "../../lib/core/base32.ts";
import { type LabProcess, run, sleep, spawn, tail } from "./netns.ts";

export interface HostRecord {
  name: string;
  addr: string;
}

export interface CnameRecord {
  alias: string;
  target: string;
}

export interface TxtRecord {
  name: string;
  /** One string per character-string of the record. */
  text: string | string[];
}

export interface Zone {
  /** Zone the server is authoritative for (default "lab.test"): unknown names get NXDOMAIN. */
  domain?: string;
  hosts?: HostRecord[];
  cnames?: CnameRecord[];
  txts?: TxtRecord[];
}

export interface DnsmasqOptions {
  /** Namespace to run in; `listen` must be one of its addresses. */
  ns: string;
  listen: string;
  zone: Zone;
  /** Log every query to the captured output (default true: handy in failure messages). */
  logQueries?: boolean;
}

const NAME_OK = /^[A-Za-z0-9_.-]+$/;

function checkName(n: string): string {
  // dnsmasq config lines are comma separated: refuse anything that could break a line apart.
  if (!NAME_OK.test(n)) throw new Error(`bad DNS name for dnsmasq: ${JSON.stringify(n)}`);
  return n;
}

function quoteTxt(s: string): string {
  if (/["\\\n]/.test(s)) {
    throw new Error(`unsupported character in TXT string ${JSON.stringify(s)}`);
  }
  return `"${s}"`;
}

/** The configuration file dnsmasq is started with. */
export function dnsmasqConfig(opts: DnsmasqOptions): string {
  const z = opts.zone;
  const domain = checkName(z.domain ?? "lab.test");
  const lines = [
    "no-resolv",
    "no-hosts",
    `listen-address=${opts.listen}`,
    "bind-interfaces",
    "port=53",
    // Authoritative-style answers for the test zone; nothing is ever forwarded anywhere.
    `local=/${domain}/`,
    // Empty: no pid file is written.
    "pid-file=",
    "log-facility=-",
  ];
  if (opts.logQueries ?? true) lines.push("log-queries");
  for (const h of z.hosts ?? []) lines.push(`host-record=${checkName(h.name)},${h.addr}`);
  for (const c of z.cnames ?? []) {
    lines.push(`cname=${checkName(c.alias)},${checkName(c.target)}`);
  }
  for (const t of z.txts ?? []) {
    const parts = typeof t.text === "string" ? [t.text] : t.text;
    lines.push(`txt-record=${checkName(t.name)},${parts.map(quoteTxt).join(",")}`);
  }
  return lines.join("\n") + "\n";
}

/** Encodes a port the way pq1 labels carry it: base32 of its two big-endian bytes. */
export function base32Port(port: number): string {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad port ${port}`);
  return base32Encode(new Uint8Array([port >> 8, port & 0xff]));
}

/** `pq1` + base32(pkhash) [+ base32(cryptoport) + base32(keyport)]. */
export function pq1Label(rootBase32: string, ports?: { crypto: number; key: number }): string {
  if (rootBase32.length !== 52) throw new Error("the key hash must be 52 base32 characters");
  const suffix = ports ? base32Port(ports.crypto) + base32Port(ports.key) : "";
  return `pq1${rootBase32}${suffix}`;
}

export interface AnnouncementOptions {
  /** Announced server name, e.g. "www" → www.lab.test CNAME pq1....lab.test. */
  alias: string;
  rootBase32: string;
  addr: string;
  domain?: string;
  cryptoPort?: number;
  keyPort?: number;
  /** "label": ports inside the pq1 label (the reference keygen's form). "txt": a 52-character
   * label plus TXT `p=` at the pq1 name and `ip=...;p=` at ks.<pq1 name>. "none": neither. */
  ports: "label" | "txt" | "none";
}

/** The records announcing one PQConnect server. */
export function announcement(a: AnnouncementOptions): Zone {
  const domain = a.domain ?? "lab.test";
  const crypto = a.cryptoPort ?? 42424;
  const key = a.keyPort ?? 42425;
  const label = pq1Label(a.rootBase32, a.ports === "label" ? { crypto, key } : undefined);
  const pqName = `${label}.${domain}`;
  const zone: Zone = {
    domain,
    hosts: [{ name: pqName, addr: a.addr }],
    cnames: [{ alias: `${a.alias}.${domain}`, target: pqName }],
    txts: [],
  };
  if (a.ports === "txt") {
    zone.txts!.push({ name: pqName, text: `p=${crypto}` });
    zone.txts!.push({ name: `ks.${pqName}`, text: `ip=${a.addr};p=${key}` });
  }
  return zone;
}

/** Concatenates zones (the first one's domain wins). */
export function mergeZones(...zones: Zone[]): Zone {
  return {
    domain: zones.find((z) => z.domain)?.domain,
    hosts: zones.flatMap((z) => z.hosts ?? []),
    cnames: zones.flatMap((z) => z.cnames ?? []),
    txts: zones.flatMap((z) => z.txts ?? []),
  };
}

export interface DigResult {
  status: string;
  /** Answer section lines: [name, ttl, type, data]. */
  answers: { name: string; ttl: number; type: string; data: string }[];
  raw: string;
}

/** Queries `server` (default: the namespace's resolv.conf) from inside `ns` with dig. */
export async function dig(
  ns: string,
  name: string,
  type = "A",
  server?: string,
  timeoutSec = 3,
): Promise<DigResult> {
  const args = ["dig", "+noall", "+answer", "+comments", `+time=${timeoutSec}`, "+tries=1"];
  if (server) args.push(`@${server}`);
  args.push(name, type);
  const r = await run(ns, args, { check: false, timeoutMs: (timeoutSec + 5) * 1000 });
  const status = r.stdout.match(/status: ([A-Z]+)/)?.[1] ?? "NORESPONSE";
  const answers = r.stdout.split("\n")
    .filter((l) => l && !l.startsWith(";"))
    .map((l) => l.split(/\s+/))
    .filter((f) => f.length >= 5)
    .map((f) => ({ name: f[0], ttl: Number(f[1]), type: f[3], data: f.slice(4).join(" ") }));
  return { status, answers, raw: r.stdout + r.stderr };
}

export class Dnsmasq {
  constructor(
    readonly process: LabProcess,
    readonly configPath: string,
    readonly tempDir: string,
  ) {}

  log(): string {
    return this.process.output();
  }

  async stop(): Promise<void> {
    await this.process.stop("SIGTERM", 3000);
    await Deno.remove(this.tempDir, { recursive: true }).catch(() => {});
  }
}

/** Starts dnsmasq and waits until it answers queries for the zone. */
export async function startDnsmasq(opts: DnsmasqOptions): Promise<Dnsmasq> {
  const dir = await Deno.makeTempDir({ prefix: "pqts-dnsmasq-" });
  // dnsmasq drops to "nobody" after reading its configuration: keep it readable.
  await Deno.chmod(dir, 0o755);
  const conf = `${dir}/dnsmasq.conf`;
  await Deno.writeTextFile(conf, dnsmasqConfig(opts));
  const proc = spawn(opts.ns, ["dnsmasq", "--keep-in-foreground", `--conf-file=${conf}`], {
    name: `dnsmasq@${opts.ns}`,
  });
  const d = new Dnsmasq(proc, conf, dir);
  try {
    await proc.waitFor(/started, version/, 5000);
    const probe = opts.zone.hosts?.[0]?.name ?? `probe.${opts.zone.domain ?? "lab.test"}`;
    for (let i = 0;; i++) {
      const r = await dig(opts.ns, probe, "A", opts.listen, 1);
      if (r.status !== "NORESPONSE") break;
      if (i >= 20) throw new Error(`dnsmasq does not answer\n${tail(proc.output())}`);
      await sleep(100);
    }
  } catch (e) {
    await d.stop();
    throw e;
  }
  return d;
}
