// The DNS step of `pqconnect check`, as pure functions over the answers the shell looked up:
// the CNAME chain to the canonical name, its pq1 label, and the ports (from the label, or from
// the TXT records the way the reference reads them).

import { base32Encode } from "../core/base32.ts";
import { hex } from "../core/bytes.ts";
import { type Announcement, parsePq1Name } from "../core/names.ts";
import { parseIpv4Address } from "../core/ip.ts";
import { EXIT, type StepResult } from "./report.ts";

export interface DnsAnswers {
  host: string;
  /** CNAME targets followed from `host`, in order (empty when `host` has none). */
  chain: string[];
  /** A records of the canonical name. */
  addresses: string[];
}

export interface Ports {
  crypto: number;
  key: number;
  /** "label" or "TXT". */
  source: string;
  /** The ip= of the ks. TXT record, when it names one (our client uses it; the reference not). */
  keyHost?: string;
}

export interface DnsFindings {
  canonical: string;
  announcement: Announcement;
  address: string;
}

const strip = (n: string) => n.replace(/\.$/, "").toLowerCase();

export function canonicalName(a: DnsAnswers): string {
  return strip(a.chain.length > 0 ? a.chain[a.chain.length - 1] : a.host);
}

/** The crypto port from TXT at the pq1 name: the first record that is exactly "p=<number>". */
export function cryptoPortFromTxt(records: string[]): number | null {
  for (const r of records) {
    const parts = r.replace(/"/g, "").trim().split("=");
    if (parts.length === 2 && parts[0].trim() === "p" && /^\d{1,5}$/.test(parts[1].trim())) {
      const p = Number(parts[1].trim());
      if (p >= 1 && p <= 65535) return p;
    }
  }
  return null;
}

/** The key port from TXT at ks.<pq1 name>: "ip=A.B.C.D;p=<number>" (two key=value parts). */
export function keyPortFromTxt(records: string[]): { port: number; ip?: string } | null {
  for (const r of records) {
    const parts = r.replace(/"/g, "").trim().split(";").map((s) => s.trim().split("="));
    if (parts.length !== 2 || parts.some((p) => p.length !== 2)) continue;
    const fields = Object.fromEntries(parts.map(([k, v]) => [k.trim(), v.trim()]));
    const port = /^\d{1,5}$/.test(fields.p ?? "") ? Number(fields.p) : 0;
    if (port < 1 || port > 65535) continue;
    const ip = fields.ip !== undefined && parseIpv4Address(fields.ip) !== null
      ? fields.ip
      : undefined;
    return { port, ip };
  }
  return null;
}

/** First part of the DNS step: the name resolves and carries an announcement. */
export function interpretNames(
  a: DnsAnswers,
  ms: number,
): { result: StepResult; findings?: DnsFindings } {
  const canonical = canonicalName(a);
  const details = [
    a.chain.length > 0
      ? `${a.host} CNAME ${a.chain.map(strip).join(" -> ")}`
      : `${a.host}: no CNAME (the name itself must carry the pq1 label)`,
  ];
  if (a.addresses.length === 0) {
    return {
      result: fail(ms, details, `${canonical} has no A record: clients cannot reach it`),
    };
  }
  details.push(`${canonical} A ${a.addresses.join(", ")}`);
  const announcement = parsePq1Name(canonical);
  if (!announcement) {
    return {
      result: fail(
        ms,
        details,
        `${canonical} carries no pq1 label (pq1 + 52 base32 characters [+ 8 for the ports]): ` +
          `clients treat it as an ordinary host`,
      ),
    };
  }
  const findings = { canonical, announcement, address: a.addresses[0] };
  return { result: pass(ms, details), findings };
}

/** Second part: the ports, from the label or from TXT (null TXT = not looked up). */
export function interpretPorts(
  result: StepResult,
  f: DnsFindings,
  txt: { crypto: string[]; key: string[] } | null,
): { result: StepResult; ports?: Ports } {
  const a = f.announcement;
  const details = [
    ...result.details,
    `key hash (base32) ${base32Encode(a.keyHash)}`,
    `key hash (hex)    ${hex(a.keyHash)}`,
  ];
  let ports: Ports | undefined;
  if (a.cryptoPort !== undefined && a.keyPort !== undefined) {
    ports = { crypto: a.cryptoPort, key: a.keyPort, source: "label" };
  } else if (txt) {
    const crypto = cryptoPortFromTxt(txt.crypto);
    const key = keyPortFromTxt(txt.key);
    details.push(
      `TXT ${f.canonical}: ${txt.crypto.map((t) => JSON.stringify(t)).join(" ") || "none"}`,
      `TXT ks.${f.canonical}: ${txt.key.map((t) => JSON.stringify(t)).join(" ") || "none"}`,
    );
    if (crypto === null || key === null) {
      const missing = [crypto === null ? `"p=PORT" at ${f.canonical}` : ""].concat(
        key === null ? [`"ip=ADDRESS;p=PORT" at ks.${f.canonical}`] : [],
      ).filter((s) => s);
      return {
        result: fail(
          result.ms,
          details,
          `the label carries no ports and the TXT record ${missing.join(" and ")} is missing ` +
            `or malformed: reference clients give up on this server`,
          { keyHash: hex(a.keyHash) },
        ),
      };
    }
    ports = { crypto, key: key.port, source: "TXT", keyHost: key.ip };
  }
  if (!ports) throw new Error("interpretPorts: TXT records needed but not given");
  details.push(
    `ports (from the ${ports.source}): crypto ${ports.crypto}, key ${ports.key}` +
      (ports.keyHost ? `, key server ip= ${ports.keyHost}` : ""),
  );
  if (ports.keyHost && ports.keyHost !== f.address) {
    details.push(
      `note: ks. TXT names ${ports.keyHost} but the A record is ${f.address}; ` +
        `the reference client always uses the A record`,
    );
  }
  return {
    result: pass(result.ms, details, {
      canonical: f.canonical,
      address: f.address,
      keyHash: hex(a.keyHash),
      keyHashBase32: base32Encode(a.keyHash),
      cryptoPort: ports.crypto,
      keyPort: ports.key,
      portsFrom: ports.source,
    }),
    ports,
  };
}

function pass(ms: number, details: string[], data?: Record<string, unknown>): StepResult {
  return { step: "dns", verdict: "pass", ms, details, data };
}

function fail(
  ms: number,
  details: string[],
  cause: string,
  data?: Record<string, unknown>,
): StepResult {
  return { step: "dns", verdict: "fail", ms, details, cause, exit: EXIT.dns, data };
}
