// Shared pieces of the command-line interface: option parsing with clear errors.

import { parseArgs, type ParseArgsConfig } from "node:util";
import { parseIpv4Address } from "../core/ip.ts";
import { type KemChoice, parseKemChoice } from "../runtime/kem_backend.ts";

/** Bad command-line input: printed with the command's usage, exit status 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  run(args: string[]): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** parseArgs that turns every parse problem into a UsageError. */
export function parseOptions<T extends Options>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/**
 * The options `client` and `server` share, with the reference's spellings beside ours:
 * --interface-name for --interface, -vv/--very-verbose for -v.
 */
export function tunnelDaemonOptions(tunAddress: string, user: string) {
  return {
    port: { type: "string", short: "p" },
    addr: { type: "string", short: "a", default: tunAddress },
    mask: { type: "string", short: "m" },
    interface: { type: "string", short: "i" },
    "interface-name": { type: "string" },
    "host-ip": { type: "string", short: "H" },
    user: { type: "string", default: user },
    mtu: { type: "string" },
    kem: { type: "string", default: "auto" },
    verbose: { type: "boolean", short: "v", default: false },
    // -vv parses as -v -v; --very-verbose is as verbose as we get.
    "very-verbose": { type: "boolean", default: false },
    help: { type: "boolean", short: "h" },
  } as const satisfies Options;
}

export function parsePort(value: string | undefined, fallback: number, what: string): number {
  if (value === undefined) return fallback;
  if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535) {
    throw new UsageError(`${what} must be a port number from 1 to 65535, not "${value}"`);
  }
  return Number(value);
}

export function parseIpv4Option(value: string | undefined, what: string): string {
  if (value === undefined) throw new UsageError(`${what} is required`);
  if (parseIpv4Address(value) === null) {
    throw new UsageError(`${what} must be an IPv4 address like 192.0.2.7, not "${value}"`);
  }
  return value;
}

/** An IPv4 address option that may be left out. */
export function optionalIpv4Option(value: string | undefined, what: string): string | undefined {
  return value === undefined ? undefined : parseIpv4Option(value, what);
}

export function parsePrefix(value: string | undefined, fallback: number, max = 30): number {
  if (value === undefined) return fallback;
  if (!/^\d{1,2}$/.test(value) || Number(value) < 8 || Number(value) > max) {
    throw new UsageError(`prefix length (--mask) must be from 8 to ${max}, not "${value}"`);
  }
  return Number(value);
}

/** A whole number option within bounds. */
export function parseNumber(
  value: string | undefined,
  fallback: number,
  min: number,
  max: number,
  what: string,
): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(`${what} must be from ${min} to ${max}, not "${value}"`);
  }
  return Number(value);
}

/** A Linux interface name (at most 15 bytes). */
export function parseInterfaceName(value: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(value)) {
    throw new UsageError(`--interface must be 1 to 15 letters, digits, '_', '.' or '-'`);
  }
  return value;
}

/** -i/--interface and the reference's --interface-name name the same thing: one at a time. */
export function interfaceOption(native?: string, reference?: string): string | undefined {
  if (native !== undefined && reference !== undefined && native !== reference) {
    throw new UsageError("--interface and --interface-name name different devices");
  }
  return native ?? reference;
}

/** A DNS name as it may appear in a zone file (labels of letters, digits, hyphens). */
export function parseDnsName(value: string | undefined, what: string): string {
  if (value === undefined) throw new UsageError(`${what} is required`);
  const name = value.endsWith(".") ? value.slice(0, -1) : value;
  const labels = name.split(".");
  const ok = name.length <= 253 && labels.length >= 2 &&
    labels.every((l) => /^[A-Za-z0-9_](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(l));
  if (!ok) throw new UsageError(`${what} must be a DNS name like www.example.org, not "${value}"`);
  return name.toLowerCase();
}

/** --kem auto|native|wasm */
export function parseKemOption(value: string): KemChoice {
  const choice = parseKemChoice(value);
  if (choice === null) throw new UsageError(`--kem must be auto, native or wasm, not ${value}`);
  return choice;
}
