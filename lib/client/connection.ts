// The connection to one server, from what DNS said about it to the handshake message: its ports
// (in the name, else in TXT records), its long-term keys (downloaded and verified once per
// server), fresh ephemeral keys, the two encapsulations and the handshake itself. Poll-style
// and sans-IO like KeyFetcher: `poll(now)` says what to do next (look up TXT records, send key
// requests, run a KEM in the worker), answers come back through the on* methods, and nothing
// moves between calls. `nextDeadline` says when `poll` has something to do without an answer
// (a retransmission, a retry, giving up).

import { wipe } from "../core/bytes.ts";
import { type HandshakeResult, initiate } from "../core/handshake.ts";
import { ephemeralKeyRequest, parseKeyResponse } from "../core/keymsg.ts";
import { x25519PublicKey } from "../core/crypto.ts";
import { numberToIpv4, parseIpv4Address } from "../core/ip.ts";
import { KeyFetcher } from "./keyfetch.ts";

/** What the client knows of one server; filled in as a connection learns it. */
export interface ServerFacts {
  keyHash: Uint8Array;
  name: string;
  realAddress: number;
  cryptoPort?: number;
  keyPort?: number;
  /** The key server's address when a TXT record names one (else the server's). */
  keyHost?: number;
  longTerm?: { mceliecePk: Uint8Array; x25519Pk: Uint8Array; pkId: number };
}

export interface ConnectionConfig {
  defaultCryptoPort: number;
  defaultKeyPort: number;
  /** Give up a key download after this long. */
  keyFetchSeconds: number;
}

/** A KEM result from the crypto worker. */
export interface Encapsulation {
  ciphertext: Uint8Array;
  sharedSecret: Uint8Array;
}

export type KeyConversation = "static" | "ephemeral";

/** What the driver does for a connection. */
export type ConnectionTask =
  | { kind: "resolve-ports"; cryptoName: string; keyName: string }
  | {
    kind: "key-request";
    conversation: KeyConversation;
    host: number;
    port: number;
    datagram: Uint8Array;
  }
  | { kind: "register-long-term"; mceliecePk: Uint8Array }
  | { kind: "encapsulate"; pkId: number; sntrupPk: Uint8Array };

export type ConnectionStep = "ports" | "keys" | "encapsulating" | "done" | "failed";

const EPHEMERAL_TRIES = 5;
const EPHEMERAL_TIMEOUT_SECONDS = 0.4;

export class Connection {
  step: ConnectionStep = "ports";
  /** Why the connection failed (step "failed"). */
  failure = "";
  /** The handshake message and the session roots (step "done"). */
  result?: HandshakeResult & { message: Uint8Array };
  readonly started: number;
  private portsAsked = false;
  private fetcher?: KeyFetcher;
  private registering = false;
  private ephemeral?: { sntrupPk: Uint8Array; x25519Pk: Uint8Array };
  private ephemeralTries = 0;
  private ephemeralNextAt = 0;

  /** `x25519Sk`: fresh randomness for this handshake (erased once used). */
  constructor(
    readonly server: ServerFacts,
    private readonly config: ConnectionConfig,
    private readonly x25519Sk: Uint8Array,
    now: number,
  ) {
    this.started = now;
  }

  get keyHost(): number {
    return this.server.keyHost ?? this.server.realAddress;
  }

  /** The long-term key download in progress, for its figures. */
  get download(): KeyFetcher | undefined {
    return this.fetcher;
  }

  /** What to do now. */
  poll(now: number): ConnectionTask[] {
    if (this.step === "ports") {
      const tasks = this.pollPorts();
      if (this.step === "ports") return tasks;
    }
    if (this.step === "keys") return this.pollKeys(now);
    return [];
  }

  private pollPorts(): ConnectionTask[] {
    const s = this.server;
    if (s.cryptoPort !== undefined && s.keyPort !== undefined) {
      this.step = "keys";
      return [];
    }
    if (this.portsAsked) return [];
    this.portsAsked = true;
    // Ports not in the name: the reference publishes them as TXT records.
    return [{ kind: "resolve-ports", cryptoName: s.name, keyName: `ks.${s.name}` }];
  }

  private pollKeys(now: number): ConnectionTask[] {
    const out: ConnectionTask[] = [];
    const host = this.keyHost;
    const port = this.server.keyPort!;
    if (!this.server.longTerm && !this.registering) {
      this.fetcher ??= new KeyFetcher(this.server.keyHash, now);
      const f = this.fetcher;
      if (f.complete) {
        this.registering = true;
        out.push({ kind: "register-long-term", mceliecePk: f.keys().mceliecePk });
      } else if (now - f.started > this.config.keyFetchSeconds) {
        return this.fail(
          `key download from ${numberToIpv4(host)}:${port} gave up after ` +
            `${this.config.keyFetchSeconds} s (${f.responsesAccepted} of 937 parts)`,
        );
      } else {
        for (const datagram of f.poll(now)) {
          out.push({ kind: "key-request", conversation: "static", host, port, datagram });
        }
      }
    }
    if (!this.ephemeral && now >= this.ephemeralNextAt) {
      if (this.ephemeralTries >= EPHEMERAL_TRIES) {
        return this.fail(`no ephemeral keys from ${numberToIpv4(host)}:${port}`);
      }
      this.ephemeralTries++;
      this.ephemeralNextAt = now + EPHEMERAL_TIMEOUT_SECONDS;
      out.push({
        kind: "key-request",
        conversation: "ephemeral",
        host,
        port,
        datagram: ephemeralKeyRequest(),
      });
    }
    if (this.server.longTerm && this.ephemeral) {
      this.step = "encapsulating";
      out.push({
        kind: "encapsulate",
        pkId: this.server.longTerm.pkId,
        sntrupPk: this.ephemeral.sntrupPk,
      });
    }
    return out;
  }

  /** When `poll` next has something to do by itself (seconds, same clock); Infinity: never. */
  nextDeadline(now: number): number {
    if (this.step !== "keys") return Infinity;
    let at = Infinity;
    const f = this.fetcher;
    if (f && !f.complete && !this.registering) {
      at = Math.min(now + f.nextDeadline(now), f.started + this.config.keyFetchSeconds);
    }
    if (!this.ephemeral) at = Math.min(at, this.ephemeralNextAt);
    return at;
  }

  /** The TXT strings at the server's name and at ks.<name>. */
  onPorts(cryptoTxt: string[], keyTxt: string[]): void {
    const s = this.server;
    for (const txt of cryptoTxt) {
      const m = /(?:^|;)\s*p=(\d{1,5})\b/.exec(txt);
      if (m) s.cryptoPort = Number(m[1]);
    }
    for (const txt of keyTxt) {
      const p = /(?:^|;)\s*p=(\d{1,5})\b/.exec(txt);
      if (p) s.keyPort = Number(p[1]);
      const ip = /(?:^|;)\s*ip=([0-9.]+)/.exec(txt);
      const keyHost = ip ? parseIpv4Address(ip[1]) : null;
      if (keyHost !== null) s.keyHost = keyHost;
    }
    s.cryptoPort ??= this.config.defaultCryptoPort;
    s.keyPort ??= this.config.defaultKeyPort;
    if (this.step === "ports") this.step = "keys";
  }

  /** One datagram from the key server in one of the two conversations. */
  onKeyResponse(conversation: KeyConversation, datagram: Uint8Array, now: number): void {
    if (this.step !== "keys") return;
    if (conversation === "static") {
      this.fetcher?.onResponse(datagram, now);
      return;
    }
    if (this.ephemeral) return;
    const r = parseKeyResponse(datagram);
    if (r?.kind === "ephemeral") {
      this.ephemeral = { sntrupPk: r.sntrupPk.slice(), x25519Pk: r.x25519Pk.slice() };
    }
  }

  /** The crypto worker knows the downloaded McEliece key as `pkId`. */
  onLongTermRegistered(pkId: number): void {
    const keys = this.fetcher!.keys();
    this.server.longTerm = { ...keys, pkId };
    this.registering = false;
  }

  /** Both encapsulations are done: the handshake message is made (step "done"). */
  onEncapsulated(mceliece: Encapsulation, sntrup: Encapsulation): void {
    if (this.step !== "encapsulating") return;
    const lt = this.server.longTerm!;
    try {
      this.result = initiate({
        mcelieceCt: mceliece.ciphertext,
        mcelieceSs: mceliece.sharedSecret,
        clientX25519Sk: this.x25519Sk,
        clientX25519Pk: x25519PublicKey(this.x25519Sk),
        serverStaticX25519Pk: lt.x25519Pk,
        serverEphemeralX25519Pk: this.ephemeral!.x25519Pk,
        sntrupCt: sntrup.ciphertext,
        sntrupSs: sntrup.sharedSecret,
      });
      this.step = "done";
    } finally {
      wipe(this.x25519Sk, mceliece.sharedSecret, sntrup.sharedSecret);
    }
  }

  /** Gives up (step "failed"); returns no further tasks. */
  fail(why: string): ConnectionTask[] {
    if (this.step === "done" || this.step === "failed") return [];
    this.step = "failed";
    this.failure = why;
    wipe(this.x25519Sk);
    return [];
  }
}
