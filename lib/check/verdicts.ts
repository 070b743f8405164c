// The verdicts of the steps after DNS, as pure functions of what the shell observed: numbers,
// times and bytes in, a StepResult with its likely cause out.

import { base32Encode } from "../core/base32.ts";
import { equalBytes, hex } from "../core/bytes.ts";
import { formatPq1Label } from "../core/names.ts";
import { EPOCH_LIFETIME_SECONDS, EPOCH_SECONDS } from "../core/constants.ts";
import { slotOf } from "../core/ephemeral.ts";
import { numberToIpv4 } from "../core/ip.ts";
import { EXIT, type StepResult } from "./report.ts";

/** Parts of the long-term key tree below the root (which DNS gives): 1 + 26 + 910. */
export const KEY_TREE_PARTS = 1 + 26 + 910;

export function keydirVerdict(
  dir: string,
  localHash: Uint8Array,
  dnsHash: Uint8Array,
  ports: { crypto: number; key: number },
  ms: number,
): StepResult {
  const details = [`${dir}: key hash ${base32Encode(localHash)}`];
  if (equalBytes(localHash, dnsHash)) {
    return { step: "keydir", verdict: "pass", ms, details: [...details, "the same as in DNS"] };
  }
  details.push(`DNS announces ${base32Encode(dnsHash)}`);
  return {
    step: "keydir",
    verdict: "fail",
    ms,
    details,
    cause: `the keys in ${dir} are not the ones DNS announces (new keys, old DNS?): publish ` +
      `${formatPq1Label(localHash, ports)} as the pq1 name, or put the announced keys back`,
    exit: EXIT.keydirMismatch,
  };
}

export interface KeyDownload {
  host: string;
  port: number;
  complete: boolean;
  accepted: number;
  rejected: number;
  requests: number;
  ms: number;
  /** The root hash the server sent as node (0, 0), even when it did not verify. */
  servedRoot?: Uint8Array;
  /** When nothing answered on the announced port: other ports probed, and the first that
   * answered with an ephemeral key. */
  probed?: number[];
  answeredOn?: number;
  /** Gave up after this many seconds. */
  limitSeconds: number;
}

export function keysVerdict(d: KeyDownload, announced: Uint8Array): StepResult {
  const at = `${d.host}:${d.port}`;
  const data = {
    parts: d.accepted,
    requests: d.requests,
    retransmissions: Math.max(0, d.requests - KEY_TREE_PARTS),
    rejected: d.rejected,
  };
  const base = { step: "keys" as const, ms: d.ms, data };
  if (d.complete) {
    return {
      ...base,
      verdict: "pass",
      details: [
        `${d.accepted} parts from ${at}, each verified against the key hash`,
        `${d.requests} requests, ${data.retransmissions} retransmissions, ` +
        `${d.rejected} datagrams rejected, ${(d.ms / 1000).toFixed(2)} s`,
      ],
    };
  }
  if (d.servedRoot && !equalBytes(d.servedRoot, announced)) {
    return {
      ...base,
      verdict: "fail",
      details: [
        `the key server at ${at} serves key hash ${base32Encode(d.servedRoot)}`,
        `DNS announces                       ${base32Encode(announced)}`,
      ],
      cause: `key mismatch: the server runs with other keys than the announced ones (the pq1 ` +
        `name for its keys starts ${formatPq1Label(d.servedRoot)}); fix DNS or the key directory`,
      exit: EXIT.keyMismatch,
      data: { ...data, servedHash: hex(d.servedRoot) },
    };
  }
  if (d.accepted === 0 && d.rejected === 0) {
    const probed = d.probed ?? [];
    if (d.answeredOn !== undefined) {
      return {
        ...base,
        verdict: "fail",
        details: [
          `no answer from ${at} in ${(d.ms / 1000).toFixed(1)} s`,
          `a PQConnect key server answers on port ${d.answeredOn} of ${d.host}`,
        ],
        cause: `wrong port: the announcement says key port ${d.port}, the server listens on ` +
          `${d.answeredOn} (fix the ports in the pq1 name or TXT, or the server's -k/-p)`,
        exit: EXIT.wrongPort,
      };
    }
    return {
      ...base,
      verdict: "fail",
      details: [
        `no answer from ${at} in ${(d.ms / 1000).toFixed(1)} s` +
        (probed.length ? ` (nor on port${probed.length > 1 ? "s" : ""} ${probed.join(", ")})` : ""),
      ],
      cause: `nothing answers on UDP ${at}: the server is not running, or a firewall filters ` +
        `the port (open UDP ${d.port} and the crypto port)`,
      exit: EXIT.unreachable,
    };
  }
  return {
    ...base,
    verdict: "fail",
    details: [
      `${d.accepted} of ${KEY_TREE_PARTS} parts verified from ${at} in ` +
      `${(d.ms / 1000).toFixed(1)} s (limit ${d.limitSeconds} s), ${d.rejected} rejected`,
    ],
    cause: d.rejected > d.accepted
      ? `key mismatch: the key server's parts do not verify against the announced hash`
      : `the key download stalled: heavy loss on the path, or a rate limit on the key port`,
    exit: d.rejected > d.accepted ? EXIT.keyMismatch : EXIT.unreachable,
  };
}

export interface EphemeralFetch {
  /** Unix time (s) when the answer arrived. */
  at: number;
  x25519Pk: Uint8Array;
  sntrupPk: Uint8Array;
  rttMs: number;
}

/**
 * The ephemeral key's age against the 30 s slot schedule. The key carries no timestamp, so
 * the check compares two fetches: a server must hand out a new key once its slot is over. Two
 * fetches 30 s or more apart that give the same key prove it stale (whatever the clocks say);
 * nearer fetches tell whether the server rotated at a slot boundary.
 */
export function ephemeralVerdict(
  first: EphemeralFetch | null,
  second: EphemeralFetch | null,
  host: string,
  port: number,
  ms: number,
): StepResult {
  if (!first) {
    return {
      step: "ephemeral",
      verdict: "fail",
      ms,
      details: [`no ephemeral key from ${host}:${port}`],
      cause: `the key server answers for long-term keys but hands out no ephemeral key: its ` +
        `ephemeral keys are missing (key generation stopped or the server is still starting)`,
      exit: EXIT.ephemeral,
    };
  }
  const slot = slotOf(first.at);
  const into = first.at - slot;
  const details = [
    `sntrup761 + X25519 key in ${first.rttMs.toFixed(1)} ms; x25519 ${
      hex(first.x25519Pk).slice(0, 16)
    }…`,
    `slot ${slot} by this machine's clock, ${into.toFixed(1)} s of its ${EPOCH_SECONDS} s gone; ` +
    `handshakes may use it for ${(EPOCH_LIFETIME_SECONDS - into).toFixed(0)} s more`,
  ];
  const data: Record<string, unknown> = { slot, secondsIntoSlot: into, rttMs: first.rttMs };
  if (second) {
    const apart = second.at - first.at;
    const same = equalBytes(first.x25519Pk, second.x25519Pk) &&
      equalBytes(first.sntrupPk, second.sntrupPk);
    data.secondFetchAfter = apart;
    data.rotated = !same;
    if (same && apart >= EPOCH_SECONDS + 1) {
      return {
        step: "ephemeral",
        verdict: "fail",
        ms,
        details: [...details, `the same key again ${apart.toFixed(1)} s later`],
        cause: `ephemeral keys stale: the server hands out one key for longer than its ` +
          `${EPOCH_SECONDS} s slot, so handshakes fail once it is ${EPOCH_LIFETIME_SECONDS} s old ` +
          `(its key generation stopped, or its clock jumps)`,
        exit: EXIT.ephemeral,
        data,
      };
    }
    const boundary = slotOf(second.at) !== slot;
    details.push(
      same
        ? `the same key ${apart.toFixed(1)} s later` +
          (boundary ? " (across a slot boundary of our clock: the server's clock differs)" : "")
        : `a new key ${apart.toFixed(1)} s later` +
          (boundary ? " (a slot boundary passed: rotation on schedule)" : " (the server's " +
            "slot boundary fell in between: its clock is not ours, which is harmless)"),
    );
  }
  return { step: "ephemeral", verdict: "pass", ms, details, data };
}

export interface TunnelOutcome {
  probe: string;
  sends: number;
  /** Milliseconds from the handshake to the first answer (0-RTT data included). */
  firstAnswerMs?: number;
  /** Round trip of one more probe through the established tunnel (or of the first answered
   * probe when that one got no answer). */
  rttMs?: number;
  what?: string;
  from?: number;
  to?: number;
  /** Tunnel datagrams that came back but did not decrypt or were not answers. */
  other: number;
  waitedMs: number;
  cryptoPort: number;
  host: string;
}

export function tunnelVerdict(o: TunnelOutcome, ms: number): StepResult {
  if (o.rttMs !== undefined && o.from !== undefined && o.to !== undefined) {
    return {
      step: "tunnel",
      verdict: "pass",
      ms,
      details: [
        `${o.what} from ${numberToIpv4(o.from)} (where the server delivers) to ` +
        (o.to === 0
          ? "0.0.0.0 (the server blanks the destination, as the reference does)"
          : `${numberToIpv4(o.to)} (our tunnel address at the server)`),
        `first answer ${o.firstAnswerMs!.toFixed(0)} ms after the handshake (0-RTT); ` +
        `round trip through the tunnel ${o.rttMs.toFixed(1)} ms; ${o.sends} probe(s) sent`,
      ],
      data: {
        rttMs: o.rttMs,
        firstAnswerMs: o.firstAnswerMs,
        sends: o.sends,
        from: numberToIpv4(o.from),
        to: numberToIpv4(o.to),
      },
    };
  }
  return {
    step: "tunnel",
    verdict: "fail",
    ms,
    details: [
      `${o.sends} ${o.probe} probe(s) sent through the tunnel to ${o.host}:${o.cryptoPort}, ` +
      `no answer in ${(o.waitedMs / 1000).toFixed(1)} s` +
      (o.other ? ` (${o.other} other datagrams)` : ""),
    ],
    cause: `no answer inside the tunnel: the crypto port ${o.cryptoPort} is filtered or wrong, ` +
      `the server rejected the handshake (ephemeral keys stale?), or its host does not answer ` +
      `${o.probe} (try --port with a TCP port it serves)`,
    exit: EXIT.noTunnelAnswer,
  };
}
