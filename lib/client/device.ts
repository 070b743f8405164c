// The client's packet logic: one entry per announced server (by key hash), each with an
// internal address that applications use, the keys learned for it, and its tunnel session.
// Packets an application sends before the tunnel is up are held and sent once it is, so the
// first TCP SYN to a new server is not lost. IO and slow crypto come in through interfaces.

import { concat, hex, wipe } from "../core/bytes.ts";
import { MSG_TUNNEL, TUNNEL_OVERHEAD } from "../core/constants.ts";
import { initiate } from "../core/handshake.ts";
import { tidKeyAt, TunnelSession } from "../core/session.ts";
import { isCookie } from "../core/cookie.ts";
import { ephemeralKeyRequest, parseKeyResponse } from "../core/keymsg.ts";
import { x25519PublicKey } from "../core/crypto.ts";
import { AddressPool } from "../core/addresses.ts";
import { ipv4Dst, ipv4HeaderLength, numberToIpv4, parseIpv4Address } from "../core/ip.ts";
import { translate } from "../core/nat.ts";
import type { DropCounters, Logger } from "../core/log.ts";
import { KeyFetcher } from "./keyfetch.ts";

/** A request/response conversation with a key server, from a socket of its own. */
export interface KeyChannel {
  send(datagram: Uint8Array): void;
  /** Datagrams that arrived from the key server, waiting at most `timeoutMs` for the first. */
  receive(timeoutMs: number): Promise<Uint8Array[]>;
  close(): void;
}

export interface ClientIo {
  sendUdp(data: Uint8Array, host: number, port: number): void;
  writeTun(packet: Uint8Array): void;
  /** Optional: a buffer to seal the next datagram into; sendUdp then takes it without a copy. */
  udpBuffer?(): Uint8Array | undefined;
  openKeyChannel(host: number, port: number): KeyChannel;
  /** TXT strings at `name`; empty when there are none. */
  resolveTxt(name: string): Promise<string[]>;
}

export interface InitiatorCrypto {
  registerMcEliecePk(pk: Uint8Array): Promise<number>;
  mcelieceEncap(pkId: number): Promise<{ ciphertext: Uint8Array; sharedSecret: Uint8Array }>;
  sntrupEncap(pk: Uint8Array): Promise<{ ciphertext: Uint8Array; sharedSecret: Uint8Array }>;
}

export interface ClientConfig {
  tunAddress: number;
  prefix: number;
  defaultCryptoPort: number;
  defaultKeyPort: number;
  /** Give up a key download after this long. */
  keyFetchSeconds: number;
  /** McEliece ciphertexts kept ready per server, so later tunnels need no key download. */
  precomputed: number;
  /** Where packets from servers are delivered (-H); the TUN address when absent. */
  hostAddress?: number;
}

export type ServerState = "idle" | "connecting" | "up" | "failed";

export interface ServerEntry {
  keyHash: Uint8Array;
  id: string;
  name: string;
  realAddress: number;
  internal: number;
  cryptoPort?: number;
  keyPort?: number;
  keyHost?: number;
  longTerm?: { mceliecePk: Uint8Array; x25519Pk: Uint8Array; pkId: number };
  ciphertexts: { ciphertext: Uint8Array; sharedSecret: Uint8Array }[];
  refilling: boolean;
  state: ServerState;
  session?: TunnelSession;
  tidKey?: string;
  connecting?: Promise<void>;
  /** Earliest time of the next connection attempt after a failure. */
  retryAt: number;
  held: Uint8Array[];
  heldBytes: number;
  cookie?: Uint8Array;
  established?: number;
  lastRx: number;
  lastTx: number;
  /** Packets sent since the last one received: a silent server is noticed by this. */
  unanswered: number;
  /** Whether anything authenticated came back through the current session. */
  heardFrom: boolean;
  txBytes: number;
  rxBytes: number;
  tunnels: number;
}

const HELD_PACKETS = 64;
const HELD_BYTES = 256 * 1024;
const EPHEMERAL_TRIES = 5;
const EPHEMERAL_TIMEOUT_MS = 400;
/** A server that has answered nothing for this long while we keep sending is presumed gone. */
const SILENCE_SECONDS = 3;
const SILENT_PACKETS = 3;
const RETRY_SECONDS = 2;
/**
 * When the first packets go out again if the server has not been heard from yet. The reference
 * server knows the tunnel a few ms after the handshake arrives, so the first resend is early:
 * the first connection can take most of TCP's 1 s SYN timer already (key download). A server
 * that holds early packets (ours) may then deliver a packet twice, which IP allows.
 */
const RESEND_DELAYS_MS = [40, 200, 600];

export class ClientDevice {
  readonly drops: DropCounters;
  private readonly pool: AddressPool;
  private readonly byKey = new Map<string, ServerEntry>();
  private readonly byInternal = new Map<number, ServerEntry>();
  private readonly byTid = new Map<string, ServerEntry>();
  /** First packets sent again because the server had not answered yet. */
  resent = 0;

  constructor(
    private readonly config: ClientConfig,
    private readonly io: ClientIo,
    private readonly crypto: InitiatorCrypto,
    private readonly log: Logger,
    drops: DropCounters,
    private readonly now: () => number,
  ) {
    this.drops = drops;
    this.pool = new AddressPool(config.tunAddress, config.prefix);
  }

  get servers(): Iterable<ServerEntry> {
    return this.byKey.values();
  }

  /**
   * A DNS answer announced a server: its internal address (allocated on first sight, kept for
   * the server's lifetime here), and the connection starts at once.
   */
  announce(
    a: { keyHash: Uint8Array; cryptoPort?: number; keyPort?: number },
    realAddress: number,
    name: string,
  ): number | null {
    const id = hex(a.keyHash);
    let entry = this.byKey.get(id);
    if (!entry) {
      const internal = this.pool.allocate();
      if (internal === null) {
        this.drops.count("client-subnet-exhausted");
        return null;
      }
      entry = {
        keyHash: a.keyHash.slice(),
        id,
        name,
        realAddress,
        internal,
        ciphertexts: [],
        refilling: false,
        state: "idle",
        retryAt: 0,
        held: [],
        heldBytes: 0,
        lastRx: 0,
        lastTx: 0,
        unanswered: 0,
        heardFrom: false,
        txBytes: 0,
        rxBytes: 0,
        tunnels: 0,
      };
      this.byKey.set(id, entry);
      this.byInternal.set(internal, entry);
      this.log.info(
        `${name}: PQConnect server ${id.slice(0, 12)} at ${numberToIpv4(realAddress)} ` +
          `gets internal address ${numberToIpv4(internal)}`,
      );
    } else if (entry.realAddress !== realAddress) {
      this.log.info(`${name}: server ${id.slice(0, 12)} moved to ${numberToIpv4(realAddress)}`);
      entry.realAddress = realAddress;
      entry.keyHost = undefined;
    }
    entry.name = name;
    if (a.cryptoPort !== undefined) entry.cryptoPort = a.cryptoPort;
    if (a.keyPort !== undefined) entry.keyPort = a.keyPort;
    if (entry.state !== "up") this.connect(entry);
    return entry.internal;
  }

  /** Starts (once) making a tunnel to `entry`. */
  private connect(entry: ServerEntry): void {
    if (entry.connecting || this.now() < entry.retryAt) return;
    entry.state = "connecting";
    const started = this.now();
    entry.connecting = this.handshake(entry)
      .then(() => {
        this.log.info(
          `${entry.name}: tunnel ${hex(entry.session!.tid).slice(0, 12)} up ` +
            `(${((this.now() - started) * 1000).toFixed(0)} ms)`,
        );
      })
      .catch((e) => {
        entry.state = "failed";
        entry.retryAt = this.now() + RETRY_SECONDS;
        this.dropHeld(entry, "held-connect-failed");
        this.log.warn(
          `${entry.name}: no tunnel to ${numberToIpv4(entry.realAddress)}: ${e.message ?? e}`,
        );
      })
      .finally(() => {
        entry.connecting = undefined;
      });
  }

  private async ports(entry: ServerEntry): Promise<void> {
    if (entry.cryptoPort !== undefined && entry.keyPort !== undefined) return;
    // Ports not in the name: the reference publishes them as TXT records.
    const [crypto, keys] = await Promise.all([
      this.io.resolveTxt(entry.name).catch(() => []),
      this.io.resolveTxt(`ks.${entry.name}`).catch(() => []),
    ]);
    for (const txt of crypto) {
      const m = /(?:^|;)\s*p=(\d{1,5})\b/.exec(txt);
      if (m) entry.cryptoPort = Number(m[1]);
    }
    for (const txt of keys) {
      const p = /(?:^|;)\s*p=(\d{1,5})\b/.exec(txt);
      if (p) entry.keyPort = Number(p[1]);
      const ip = /(?:^|;)\s*ip=([0-9.]+)/.exec(txt);
      const keyHost = ip ? parseIpv4Address(ip[1]) : null;
      if (keyHost !== null) entry.keyHost = keyHost;
    }
    entry.cryptoPort ??= this.config.defaultCryptoPort;
    entry.keyPort ??= this.config.defaultKeyPort;
  }

  private async longTermKeys(entry: ServerEntry): Promise<void> {
    if (entry.longTerm) return;
    const host = entry.keyHost ?? entry.realAddress;
    const channel = this.io.openKeyChannel(host, entry.keyPort!);
    const fetcher = new KeyFetcher(entry.keyHash, this.now());
    try {
      while (!fetcher.complete) {
        if (this.now() - fetcher.started > this.config.keyFetchSeconds) {
          throw new Error(
            `key download from ${numberToIpv4(host)}:${entry.keyPort} gave up after ` +
              `${this.config.keyFetchSeconds} s (${fetcher.responsesAccepted} of 937 parts)`,
          );
        }
        for (const req of fetcher.poll(this.now())) channel.send(req);
        const wait = Math.min(200, Math.max(1, fetcher.nextDeadline(this.now()) * 1000));
        for (const d of await channel.receive(wait)) fetcher.onResponse(d, this.now());
      }
    } finally {
      channel.close();
    }
    const keys = fetcher.keys();
    const pkId = await this.crypto.registerMcEliecePk(keys.mceliecePk);
    entry.longTerm = { ...keys, pkId };
    this.log.info(
      `${entry.name}: long-term keys verified (${fetcher.responsesAccepted} parts, ` +
        `${fetcher.requestsSent} requests, ` +
        `${((this.now() - fetcher.started) * 1000).toFixed(0)} ms)`,
    );
  }

  private async ephemeralKeys(
    entry: ServerEntry,
  ): Promise<{ sntrupPk: Uint8Array; x25519Pk: Uint8Array }> {
    const host = entry.keyHost ?? entry.realAddress;
    const channel = this.io.openKeyChannel(host, entry.keyPort!);
    try {
      for (let i = 0; i < EPHEMERAL_TRIES; i++) {
        channel.send(ephemeralKeyRequest());
        const deadline = this.now() + EPHEMERAL_TIMEOUT_MS / 1000;
        while (this.now() < deadline) {
          for (const d of await channel.receive((deadline - this.now()) * 1000)) {
            const r = parseKeyResponse(d);
            if (r?.kind === "ephemeral") {
              return { sntrupPk: r.sntrupPk.slice(), x25519Pk: r.x25519Pk.slice() };
            }
          }
        }
      }
    } finally {
      channel.close();
    }
    throw new Error(`no ephemeral keys from ${numberToIpv4(host)}:${entry.keyPort}`);
  }

  private async handshake(entry: ServerEntry): Promise<void> {
    await this.ports(entry);
    const [, eph] = await Promise.all([this.longTermKeys(entry), this.ephemeralKeys(entry)]);
    const lt = entry.longTerm!;
    const mc = entry.ciphertexts.shift() ?? await this.crypto.mcelieceEncap(lt.pkId);
    const nt = await this.crypto.sntrupEncap(eph.sntrupPk);
    const x25519Sk = crypto.getRandomValues(new Uint8Array(32));
    const result = initiate({
      mcelieceCt: mc.ciphertext,
      mcelieceSs: mc.sharedSecret,
      clientX25519Sk: x25519Sk,
      clientX25519Pk: x25519PublicKey(x25519Sk),
      serverStaticX25519Pk: lt.x25519Pk,
      serverEphemeralX25519Pk: eph.x25519Pk,
      sntrupCt: nt.ciphertext,
      sntrupSs: nt.sharedSecret,
    });
    wipe(x25519Sk, mc.sharedSecret, nt.sharedSecret);
    const now = this.now();
    this.closeSession(entry);
    entry.session = TunnelSession.create(result.tid, result.i2r, result.r2i, now);
    entry.tidKey = tidKeyAt(result.tid, 0);
    this.byTid.set(entry.tidKey, entry);
    entry.cookie = undefined;
    this.io.sendUdp(result.message, entry.realAddress, entry.cryptoPort!);
    entry.state = "up";
    entry.established = now;
    entry.lastRx = now;
    entry.unanswered = 0;
    entry.heardFrom = false;
    entry.tunnels++;
    this.flushHeld(entry);
    this.refill(entry);
  }

  /** Keeps a few McEliece ciphertexts ready for this server (in the background, bounded). */
  private refill(entry: ServerEntry): void {
    if (entry.refilling || !entry.longTerm || this.config.precomputed === 0) return;
    entry.refilling = true;
    (async () => {
      while (entry.longTerm && entry.ciphertexts.length < this.config.precomputed) {
        entry.ciphertexts.push(await this.crypto.mcelieceEncap(entry.longTerm.pkId));
      }
    })()
      .catch((e) => this.log.debug(`${entry.name}: precomputing ciphertexts stopped: ${e}`))
      .finally(() => entry.refilling = false);
  }

  private closeSession(entry: ServerEntry): void {
    if (entry.tidKey && this.byTid.get(entry.tidKey) === entry) this.byTid.delete(entry.tidKey);
    entry.session?.close();
    entry.session = undefined;
    entry.tidKey = undefined;
  }

  private flushHeld(entry: ServerEntry): void {
    const held = entry.held;
    entry.held = [];
    entry.heldBytes = 0;
    for (const p of held) this.send(entry, p);
    if (held.length > 0) this.resendUntilHeard(entry, held);
  }

  /**
   * The reference server creates a session only once its handshake threads finish and drops
   * tunnel packets that overtake that, so the packets sent right behind the handshake are sent
   * again (fresh counters) a few times until the server is heard from. Duplicates are harmless
   * to IP; a lost first SYN costs the application a whole second.
   */
  private resendUntilHeard(entry: ServerEntry, packets: Uint8Array[]): void {
    const session = entry.session;
    let attempt = 0;
    const again = () => {
      if (entry.session !== session || entry.heardFrom || !session?.alive(this.now())) return;
      this.resent += packets.length;
      for (const p of packets) this.send(entry, p);
      if (++attempt < RESEND_DELAYS_MS.length) schedule(RESEND_DELAYS_MS[attempt]);
    };
    const schedule = (ms: number) => Deno.unrefTimer(setTimeout(again, ms));
    schedule(RESEND_DELAYS_MS[0]);
  }

  private dropHeld(entry: ServerEntry, reason: string): void {
    for (const _ of entry.held) this.drops.count(reason);
    entry.held = [];
    entry.heldBytes = 0;
  }

  private send(entry: ServerEntry, packet: Uint8Array): void {
    const now = this.now();
    let wire = entry.session!.seal(packet, now, this.io.udpBuffer?.());
    if (entry.cookie) {
      // The server handed us our state: it comes back in front of the next packet.
      wire = concat(entry.cookie, wire);
      entry.cookie = undefined;
    }
    this.io.sendUdp(wire, entry.realAddress, entry.cryptoPort!);
    entry.lastTx = now;
    entry.unanswered++;
    entry.txBytes += packet.length;
  }

  /** A packet an application sent to an internal address. */
  onTunPacket(packet: Uint8Array): void {
    if (ipv4HeaderLength(packet) === 0) return this.drops.count("tun-not-ipv4");
    const entry = this.byInternal.get(ipv4Dst(packet));
    if (!entry) return this.drops.count("tun-no-server");
    const now = this.now();
    if (entry.state === "up" && entry.session?.alive(now)) {
      try {
        return this.send(entry, packet);
      } catch {
        this.closeSession(entry);
      }
    }
    if (entry.state === "up") {
      // The session expired while idle: a fresh 0-RTT handshake, the packet waits for it.
      this.closeSession(entry);
      entry.state = "idle";
    }
    if (entry.held.length >= HELD_PACKETS || entry.heldBytes + packet.length > HELD_BYTES) {
      return this.drops.count("held-overflow");
    }
    entry.held.push(packet.slice());
    entry.heldBytes += packet.length;
    this.connect(entry);
  }

  /** One datagram on the client port. */
  onDatagram(data: Uint8Array, _host: number, _port: number): void {
    if (data.length < TUNNEL_OVERHEAD || ((data[0] << 8) | data[1]) !== MSG_TUNNEL) {
      return this.drops.count("udp-not-tunnel");
    }
    const entry = this.byTid.get(tidKeyAt(data, 2));
    if (!entry || !entry.session) return this.drops.count("tunnel-unknown-tid");
    const now = this.now();
    const r = entry.session.openInPlace(data, now); // data is a receive slot
    if (!r.ok) return this.drops.count(`tunnel-${r.reason}`);
    entry.lastRx = now;
    entry.unanswered = 0;
    entry.heardFrom = true;
    entry.rxBytes += r.plaintext.length;
    if (isCookie(r.plaintext)) {
      entry.cookie = r.plaintext.slice(0, 144);
      entry.session.adoptCookieEpoch(now);
      this.log.info(`${entry.name}: the server handed back our session as a cookie`);
      return;
    }
    const to = this.config.hostAddress ?? this.config.tunAddress;
    if (!translate(r.plaintext, entry.internal, to)) {
      return this.drops.count("inner-not-ipv4");
    }
    this.io.writeTun(r.plaintext);
  }

  /** Once a second: notice servers that went silent or sessions that expired. */
  tick(): void {
    const now = this.now();
    for (const entry of this.byKey.values()) {
      if (entry.state !== "up" || !entry.session) continue;
      if (!entry.session.alive(now)) {
        this.closeSession(entry);
        entry.state = "idle";
        continue;
      }
      const silent = entry.unanswered >= SILENT_PACKETS && now - entry.lastRx > SILENCE_SECONDS &&
        now - entry.lastTx < SILENCE_SECONDS;
      if (silent) {
        this.log.warn(
          `${entry.name}: no answer for ${(now - entry.lastRx).toFixed(0)} s; making a new tunnel`,
        );
        this.closeSession(entry);
        entry.state = "idle";
        entry.retryAt = 0;
        this.connect(entry);
      }
    }
  }

  close(): void {
    for (const entry of this.byKey.values()) {
      this.closeSession(entry);
      for (const c of entry.ciphertexts) wipe(c.sharedSecret);
      entry.ciphertexts = [];
    }
  }
}
