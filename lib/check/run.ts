// The order of `pqconnect check`'s steps and what each one does on the wire. Everything it
// touches comes through CheckIo (lib/check/io.ts gives the real one), and every verdict is a
// pure function (dns.ts, verdicts.ts), so this file is only the sequence.

import { hex, wipe } from "../core/bytes.ts";
import { KEY_PORT, MSG_TUNNEL, TUNNEL_OVERHEAD } from "../core/constants.ts";
import { initiate } from "../core/handshake.ts";
import { ephemeralKeyRequest, parseKeyResponse, staticKeyRequest } from "../core/keymsg.ts";
import { TunnelSession } from "../core/session.ts";
import { KeyTree } from "../core/keytree.ts";
import { KeyFetcher } from "../client/keyfetch.ts";
import { interpretNames, interpretPorts, type Ports } from "./dns.ts";
import { icmpEcho, matchAnswer, type ProbeKind, tcpRst, tcpSyn } from "./probe.ts";
import { type CheckReport, finishReport, type StepResult } from "./report.ts";
import {
  type EphemeralFetch,
  ephemeralVerdict,
  keydirVerdict,
  type KeyDownload,
  keysVerdict,
  tunnelVerdict,
} from "./verdicts.ts";

export interface Datagram {
  data: Uint8Array;
  host: string;
  port: number;
}

/** A UDP socket of our own (an unprivileged one: no TUN, no raw sockets). */
export interface UdpPort {
  send(data: Uint8Array, host: string, port: number): void;
  /** What arrived, waiting at most `timeoutMs` for the first datagram. */
  receive(timeoutMs: number): Promise<Datagram[]>;
  close(): void;
}

export interface CheckIo {
  /** Records of one type; empty for NXDOMAIN or no data; throws when the resolver fails. */
  resolve(name: string, type: "A" | "CNAME" | "TXT"): Promise<string[]>;
  openUdp(): Promise<UdpPort>;
  readPublicKeys(dir: string): { mceliecePk: Uint8Array; x25519Pk: Uint8Array };
  mcelieceEncap(pk: Uint8Array): Promise<{ ciphertext: Uint8Array; sharedSecret: Uint8Array }>;
  sntrupEncap(pk: Uint8Array): Promise<{ ciphertext: Uint8Array; sharedSecret: Uint8Array }>;
  x25519Keypair(): { secretKey: Uint8Array; publicKey: Uint8Array };
  random32(): number;
  /** Monotonic seconds. */
  now(): number;
  /** Unix seconds. */
  wallClock(): number;
  sleep(ms: number): Promise<void>;
}

export interface CheckOptions {
  host: string;
  dnsOnly: boolean;
  keyDir?: string;
  /** TCP port to send a SYN to inside the tunnel instead of an ICMP echo. */
  tcpPort?: number;
  /** Seconds to wait for an answer inside the tunnel. */
  tunnelTimeout: number;
  /** Seconds a key download may take. */
  keyTimeout: number;
  /** Fetch the ephemeral key again this many seconds after the first fetch (at least). */
  rotationWait: number;
  /** Ports tried when nothing answers on the announced key port. */
  fallbackKeyPorts: number[];
}

export const DEFAULT_FALLBACK_KEY_PORTS = [KEY_PORT, 584];
/** Nothing at all back from the key port for this long: nobody is there. */
const SILENT_SECONDS = 3;
const EPHEMERAL_TRIES = 4;
const EPHEMERAL_WAIT_MS = 500;
/** When the tunnel probe goes out again while no answer came (the reference server drops 0-RTT
 * data that overtakes its handshake thread). */
const PROBE_RESENDS_MS = [40, 200, 600, 1200, 2000, 3000, 4500];

/** Runs the steps in order, stopping at the first failure. */
export async function runCheck(o: CheckOptions, io: CheckIo): Promise<CheckReport> {
  const steps: StepResult[] = [];
  const done = () => finishReport(o.host, steps);
  const timed = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
    const t = io.now();
    const v = await f();
    return [v, (io.now() - t) * 1000];
  };

  // DNS
  const t0 = io.now();
  const chain: string[] = [];
  let name = o.host;
  for (let i = 0; i < 8; i++) {
    const [target] = await io.resolve(name, "CNAME");
    if (!target) break;
    name = target.replace(/\.$/, "");
    chain.push(name);
  }
  const addresses = await io.resolve(o.host, "A");
  const named = interpretNames({ host: o.host, chain, addresses }, (io.now() - t0) * 1000);
  if (!named.findings) return steps.push(named.result), done();
  const f = named.findings;
  let txt: { crypto: string[]; key: string[] } | null = null;
  if (f.announcement.cryptoPort === undefined) {
    txt = {
      crypto: await io.resolve(f.canonical, "TXT"),
      key: await io.resolve(`ks.${f.canonical}`, "TXT"),
    };
  }
  const withPorts = interpretPorts({ ...named.result, ms: (io.now() - t0) * 1000 }, f, txt);
  steps.push(withPorts.result);
  if (!withPorts.ports) return done();
  const ports: Ports = withPorts.ports;
  const keyHash = f.announcement.keyHash;

  if (o.keyDir !== undefined) {
    const t = io.now();
    const local = io.readPublicKeys(o.keyDir);
    const root = KeyTree.build(local.mceliecePk, local.x25519Pk).root;
    steps.push(keydirVerdict(o.keyDir, root, keyHash, ports, (io.now() - t) * 1000));
    if (steps.at(-1)!.verdict === "fail") return done();
  }
  if (o.dnsOnly) return done();

  // Long-term keys
  const host = f.address;
  const keyHost = ports.keyHost ?? host;
  const [download, keysMs] = await timed(() =>
    fetchLongTermKeys(io, o, keyHost, ports.key, keyHash)
  );
  download.d.ms = keysMs;
  steps.push(keysVerdict(download.d, keyHash));
  if (!download.keys) return done();

  // Ephemeral key (first fetch)
  const [first, ephMs] = await timed(() => fetchEphemeral(io, keyHost, ports.key));
  if (!first) {
    steps.push(ephemeralVerdict(null, null, keyHost, ports.key, ephMs));
    return done();
  }

  // Handshake, then one probe inside the tunnel
  const th = io.now();
  const mc = await io.mcelieceEncap(download.keys.mceliecePk);
  const nt = await io.sntrupEncap(first.sntrupPk);
  const eph = io.x25519Keypair();
  const hs = initiate({
    mcelieceCt: mc.ciphertext,
    mcelieceSs: mc.sharedSecret,
    clientX25519Sk: eph.secretKey,
    clientX25519Pk: eph.publicKey,
    serverStaticX25519Pk: download.keys.x25519Pk,
    serverEphemeralX25519Pk: first.x25519Pk,
    sntrupCt: nt.ciphertext,
    sntrupSs: nt.sharedSecret,
  });
  wipe(mc.sharedSecret, nt.sharedSecret, eph.secretKey);
  const session = TunnelSession.create(hs.tid, hs.i2r, hs.r2i, io.now());
  const sock = await io.openUdp();
  let tunnel: StepResult;
  let handshake: StepResult;
  try {
    sock.send(hs.message, host, ports.crypto);
    const sentAt = io.now();
    handshake = {
      step: "handshake",
      verdict: "pass",
      ms: (sentAt - th) * 1000,
      details: [
        `McEliece + sntrup761 encapsulations and X25519 done, ${hs.message.length}-byte ` +
        `message sent to ${host}:${ports.crypto}`,
        `tunnel id ${hex(hs.tid).slice(0, 16)}… (the server sends no reply to a handshake: ` +
        `the next step proves it was accepted)`,
      ],
    };
    const [outcome, tunMs] = await timed(() =>
      probeTunnel(io, o, sock, session, host, ports.crypto, sentAt)
    );
    tunnel = tunnelVerdict(outcome, tunMs);
  } finally {
    sock.close();
    session.close();
  }

  // Ephemeral key again: has the server moved on to a new slot when it should have?
  const wait = o.rotationWait - (io.wallClock() - first.at);
  if (wait > 0) await io.sleep(wait * 1000);
  const second = await fetchEphemeral(io, keyHost, ports.key);
  steps.push(ephemeralVerdict(first, second, keyHost, ports.key, ephMs));
  steps.push(handshake, tunnel);
  return done();
}

async function fetchLongTermKeys(
  io: CheckIo,
  o: CheckOptions,
  host: string,
  port: number,
  keyHash: Uint8Array,
): Promise<{ d: KeyDownload; keys?: { mceliecePk: Uint8Array; x25519Pk: Uint8Array } }> {
  const d: KeyDownload = {
    host,
    port,
    complete: false,
    accepted: 0,
    rejected: 0,
    requests: 0,
    ms: 0,
    limitSeconds: o.keyTimeout,
  };
  const sock = await io.openUdp();
  const fetcher = new KeyFetcher(keyHash, io.now());
  let askedRoot = false;
  try {
    while (!fetcher.complete) {
      const elapsed = io.now() - fetcher.started;
      const heard = fetcher.responsesAccepted + fetcher.responsesRejected > 0;
      if (elapsed > o.keyTimeout || (!heard && elapsed > SILENT_SECONDS)) break;
      for (const req of fetcher.poll(io.now())) sock.send(req, host, port);
      const wait = Math.min(200, Math.max(1, fetcher.nextDeadline(io.now()) * 1000));
      for (const dg of await sock.receive(wait)) {
        if (dg.host !== host || dg.port !== port) continue;
        const r = parseKeyResponse(dg.data);
        if (r?.kind === "static" && r.depth === 0) d.servedRoot = r.node.slice();
        fetcher.onResponse(dg.data, io.now());
      }
      // Answers that do not verify against the hash: ask for the root the server has, once.
      if (fetcher.responsesAccepted === 0 && fetcher.responsesRejected > 0) {
        if (d.servedRoot) break;
        if (!askedRoot) sock.send(staticKeyRequest(0, 0), host, port);
        askedRoot = true;
        if (io.now() - fetcher.started > SILENT_SECONDS) break;
      }
    }
  } finally {
    sock.close();
  }
  d.complete = fetcher.complete;
  d.accepted = fetcher.responsesAccepted;
  d.rejected = fetcher.responsesRejected;
  d.requests = fetcher.requestsSent;
  if (d.accepted === 0 && d.rejected === 0) {
    d.probed = o.fallbackKeyPorts.filter((p) => p !== port);
    for (const p of d.probed) {
      if (await fetchEphemeral(io, host, p, 2)) {
        d.answeredOn = p;
        break;
      }
    }
  }
  return { d, keys: fetcher.complete ? fetcher.keys() : undefined };
}

async function fetchEphemeral(
  io: CheckIo,
  host: string,
  port: number,
  tries = EPHEMERAL_TRIES,
): Promise<EphemeralFetch | null> {
  const sock = await io.openUdp();
  try {
    for (let i = 0; i < tries; i++) {
      const sent = io.now();
      sock.send(ephemeralKeyRequest(), host, port);
      const deadline = sent + EPHEMERAL_WAIT_MS / 1000;
      while (io.now() < deadline) {
        for (const dg of await sock.receive((deadline - io.now()) * 1000)) {
          if (dg.host !== host || dg.port !== port) continue;
          const r = parseKeyResponse(dg.data);
          if (r?.kind === "ephemeral") {
            return {
              at: io.wallClock(),
              x25519Pk: r.x25519Pk.slice(),
              sntrupPk: r.sntrupPk.slice(),
              rttMs: (io.now() - sent) * 1000,
            };
          }
        }
      }
    }
    return null;
  } finally {
    sock.close();
  }
}

async function probeTunnel(
  io: CheckIo,
  o: CheckOptions,
  sock: UdpPort,
  session: TunnelSession,
  host: string,
  cryptoPort: number,
  handshakeAt: number,
) {
  const probe: ProbeKind = o.tcpPort === undefined
    ? { kind: "icmp", id: io.random32() & 0xffff }
    : { kind: "tcp", port: o.tcpPort, sport: 32768 + (io.random32() % 28000) };
  const sentAt = new Map<number, number>();
  let next = io.random32() & 0x7fff;
  const sendProbe = () => {
    const n = probe.kind === "icmp" ? next++ & 0xffff : (io.random32() >>> 0);
    const inner = probe.kind === "icmp"
      ? icmpEcho(probe.id, n)
      : tcpSyn(probe.sport, probe.port, n);
    sentAt.set(n, io.now());
    sock.send(session.sealPacket(inner, io.now()), host, cryptoPort);
  };
  const outcome = {
    probe: probe.kind === "icmp"
      ? "ICMP echo"
      : `TCP SYN to port ${probe.kind === "tcp" ? probe.port : 0}`,
    sends: 0,
    other: 0,
    waitedMs: 0,
    cryptoPort,
    host,
  } as Parameters<typeof tunnelVerdict>[0];
  const answerTo = async (limit: number) => {
    while (io.now() < limit) {
      for (const dg of await sock.receive(Math.max(1, (limit - io.now()) * 1000))) {
        const d = dg.data;
        if (d.length < TUNNEL_OVERHEAD || ((d[0] << 8) | d[1]) !== MSG_TUNNEL) {
          outcome.other++;
          continue;
        }
        const r = session.openPacket(d, io.now());
        const answer = r.ok ? matchAnswer(r.plaintext, probe, new Set(sentAt.keys())) : null;
        if (answer) return answer;
        outcome.other++;
      }
    }
    return null;
  };
  const secondProbe = async (): Promise<number | null> => {
    sentAt.clear();
    sendProbe();
    outcome.sends++;
    const [n, at] = [...sentAt][0];
    for (;;) {
      const answer = await answerTo(at + 1);
      if (!answer) return null;
      if (answer.probe === n) return (io.now() - at) * 1000;
    }
  };
  sendProbe();
  outcome.sends++;
  const deadline = handshakeAt + o.tunnelTimeout;
  for (let resend = 0;; resend++) {
    const limit = resend < PROBE_RESENDS_MS.length
      ? Math.min(deadline, handshakeAt + PROBE_RESENDS_MS[resend] / 1000)
      : deadline;
    const answer = await answerTo(limit);
    if (answer) {
      const t = io.now();
      outcome.rttMs = (t - sentAt.get(answer.probe)!) * 1000;
      outcome.firstAnswerMs = (t - handshakeAt) * 1000;
      outcome.what = answer.what;
      outcome.from = answer.from;
      outcome.to = answer.to;
      outcome.waitedMs = (t - handshakeAt) * 1000;
      if (probe.kind === "tcp" && answer.what.includes("SYN-ACK")) {
        // Leave no half-open connection behind on the server's host.
        const rst = tcpRst(probe.sport, probe.port, answer.probe + 1);
        sock.send(session.sealPacket(rst, t), host, cryptoPort);
      }
      // The first answer's time includes the handshake's processing: one more probe through
      // the established tunnel gives its plain round trip.
      const again = await secondProbe();
      if (again !== null) outcome.rttMs = again;
      return outcome;
    }
    if (io.now() >= deadline) break;
    // No answer yet: the reference server drops 0-RTT data that overtakes its handshake.
    sendProbe();
    outcome.sends++;
  }
  outcome.waitedMs = (io.now() - handshakeAt) * 1000;
  return outcome;
}
