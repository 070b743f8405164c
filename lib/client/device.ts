// The client's packet logic: one entry per announced server (by key hash), each with an
// internal address that applications use, what was learned of it, its connection while one is
// being made (./connection.ts) and its live tunnel (the shared data path, core/data_path.ts).
// Packets an application sends before the tunnel is up are held and sent right behind the
// handshake, so the first TCP SYN to a new server is not lost. Sans-IO like ServerDevice: IO,
// slow crypto, the clock and randomness come in; every timer runs from tick().

import { equalBytes, hex, wipe } from "../core/bytes.ts";
import { MSG_TUNNEL } from "../core/constants.ts";
import { TunnelSession } from "../core/session.ts";
import { AddressPool } from "../core/addresses.ts";
import { numberToIpv4 } from "../core/ip.ts";
import { DataPath, newPeer, type Peer, type TunnelIo } from "../core/data_path.ts";
import { type DropCounters, type Logger, LogLimiter } from "../core/log.ts";
import {
  Connection,
  type ConnectionTask,
  type Encapsulation,
  type KeyConversation,
  type ServerFacts,
} from "./connection.ts";

/** One key-server conversation, from a socket of its own. */
export interface KeyChannel {
  send(datagram: Uint8Array): void;
  close(): void;
}

export interface ClientIo extends TunnelIo {
  /** Opens a key channel to host:port; what arrives from there is handed to `deliver`. */
  /** `more`: further datagrams of the same batch follow at once, so the device may act once
   * on the whole batch after the last. */
  openKeyChannel(
    host: number,
    port: number,
    deliver: (datagram: Uint8Array, more?: boolean) => void,
  ): KeyChannel;
  /** TXT strings at `name`; empty when there are none. */
  resolveTxt(name: string): Promise<string[]>;
  /** tick() is due at `time` (seconds, the device's clock) or earlier. */
  wakeAt(time: number): void;
}

export interface InitiatorCrypto {
  registerMcEliecePk(pk: Uint8Array): Promise<number>;
  /** The crypto worker forgets a registered key (its entry went). */
  unregisterMcEliecePk(pkId: number): Promise<void>;
  mcelieceEncap(pkId: number): Promise<Encapsulation>;
  sntrupEncap(pk: Uint8Array): Promise<Encapsulation>;
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
  /** Servers known at most (default: as many as the subnet has addresses, at most 4096). */
  maxServers?: number;
  /** Connections (key downloads, handshakes) under way at once; more wait (default 8). */
  maxConnecting?: number;
  /** Servers whose long-term keys (1 MB each) are kept; the least recently used without a
   * live tunnel gives its keys up first (default 32). */
  maxKeyed?: number;
}

export type ServerState = "idle" | "connecting" | "up" | "failed";

/** First packets sent again until the server is heard from (see RESEND_DELAYS_SECONDS). */
interface Resend {
  peer: Peer;
  packets: Uint8Array[];
  attempt: number;
  at: number;
  /** The handshake message, sent again with the packets now and then (it may be the one lost). */
  initiation: Uint8Array;
  initiationAt: number;
}

export interface ServerEntry extends ServerFacts {
  id: string;
  internal: number;
  state: ServerState;
  /** The connection being made. */
  connection?: Connection;
  keyChannels: Map<KeyConversation, KeyChannel>;
  /** The live tunnel. */
  peer?: Peer;
  resend?: Resend;
  /** Earliest time of the next connection attempt after a failure. */
  retryAt: number;
  held: HeldPackets;
  ciphertexts: Encapsulation[];
  refilling: boolean;
  established?: number;
  tunnels: number;
  /** Traffic and activity of earlier tunnels (the live one counts its own). */
  past: { txBytes: number; rxBytes: number; lastActivity: number };
  /** Last announcement or application packet: the least recently used goes first. */
  lastUsed: number;
  /**
   * An address a later answer gave for this key while a tunnel was live or being made: tried
   * for the next handshake only, once the current tunnel stops answering (issue 9: an answer
   * must not move a live tunnel).
   */
  candidateAddress?: number;
  /** Waiting for a connection slot (maxConnecting). */
  waiting: boolean;
}

/** One row of `pqconnect status`. */
export interface ServerStatus {
  name: string;
  keyHash: string;
  external: string;
  internal: string;
  state: ServerState;
  tunnelId: string;
  age: number | null;
  lastActivity: number | null;
  txBytes: number;
  rxBytes: number;
  tunnels: number;
}

const HELD_PACKETS = 64;
const HELD_BYTES = 256 * 1024;
/** A server that has answered nothing for this long while we keep sending is presumed gone. */
const SILENCE_SECONDS = 3;
const SILENT_PACKETS = 3;
const RETRY_SECONDS = 2;
/** How long the address of an evicted entry rests before it is handed out again. */
const QUARANTINE_SECONDS = 120;
/** tick() runs at least this often: liveness and expiry need no earlier wakeup. */
export const TICK_SECONDS = 1;
/**
 * The handshake message goes again with the first packets' resends once this long has passed
 * since it was last sent, in case it was the datagram lost: without it a lost initiation cost
 * ~3 s of silence and a new tunnel. Not with every resend: the reference decapsulates each copy
 * that arrives while its first is still in its handshake threads (40-110 ms idle, more when busy);
 * our server and the reference drop later copies as replays before any work.
 */
export const INITIATION_RESEND_SECONDS = 0.2;
/**
 * When the first packets go out again while the server has not been heard from: the wait
 * before each resend. The reference server knows a tunnel only once its handshake threads
 * finish, and silently drops the tunnel's packets that come before (in traces, its session
 * existed 1-27 ms after our initiation on an idle server; more on a busy one). So: every 40 ms
 * for the first 0.4 s, then every 0.1 s up to 1 s, where TCP's own SYN timer takes over. tick()
 * asks for each resend again: a tick that came early for another deadline must not lose it. A resend is
 * the few held packets (bounded) under fresh counters. A server that holds early packets
 * (ours) usually answers before the first resend; if not, it may deliver a packet twice,
 * which IP allows.
 */
export const RESEND_DELAYS_SECONDS: readonly number[] = [
  ...new Array<number>(10).fill(0.04),
  ...new Array<number>(6).fill(0.1),
];

/** Packets waiting for a tunnel, bounded in count and bytes. */
export class HeldPackets {
  private packets: Uint8Array[] = [];
  private bytes = 0;

  get length(): number {
    return this.packets.length;
  }

  /** Keeps a copy; false when full. */
  push(packet: Uint8Array): boolean {
    if (this.packets.length >= HELD_PACKETS || this.bytes + packet.length > HELD_BYTES) {
      return false;
    }
    this.packets.push(packet.slice());
    this.bytes += packet.length;
    return true;
  }

  /** Everything held, in order; empty afterwards. */
  take(): Uint8Array[] {
    const all = this.packets;
    this.packets = [];
    this.bytes = 0;
    return all;
  }
}

export class ClientDevice {
  readonly drops: DropCounters;
  private readonly pool: AddressPool;
  private readonly path: DataPath;
  private readonly byKey = new Map<string, ServerEntry>();
  private readonly byInternal = new Map<number, ServerEntry>();
  /** Entries holding long-term keys registered in the crypto worker. */
  private readonly keyed = new Set<ServerEntry>();
  /** Entries whose connection waits for a slot, in arrival order. */
  private readonly waiting = new Set<ServerEntry>();
  /** Internal addresses of evicted entries, kept out of use for a while (oldest first). */
  private readonly quarantine: { address: number; since: number }[] = [];
  private connecting = 0;
  private readonly maxServers: number;
  private readonly maxConnecting: number;
  private readonly maxKeyed: number;
  private readonly logs: LogLimiter;
  /** Entries evicted to make room (for the status document and tests). */
  evicted = 0;
  /** First packets sent again because the server had not answered yet. */
  resent = 0;
  /** Handshake messages sent again with them. */
  initiationsResent = 0;

  constructor(
    private readonly config: ClientConfig,
    private readonly io: ClientIo,
    private readonly crypto: InitiatorCrypto,
    private readonly log: Logger,
    drops: DropCounters,
    private readonly now: () => number,
    private readonly random: (bytes: number) => Uint8Array,
  ) {
    this.drops = drops;
    this.pool = new AddressPool(config.tunAddress, config.prefix);
    const addresses = this.pool.broadcast - this.pool.network - 2;
    this.maxServers = Math.min(config.maxServers ?? 4096, addresses);
    this.maxConnecting = config.maxConnecting ?? 8;
    this.maxKeyed = config.maxKeyed ?? 32;
    this.logs = new LogLimiter(log, now);
    this.path = new DataPath(io, drops, {
      deliverTo: config.hostAddress ?? config.tunAddress,
      roaming: false,
    });
  }

  get servers(): Iterable<ServerEntry> {
    return this.byKey.values();
  }

  /**
   * A DNS answer announced a server: its internal address (allocated on first sight; the least
   * recently used entry without a live tunnel gives way when the table or the subnet is full).
   * Nothing is sent to the announced address unless the record answers the question a local
   * application asked (`answersQuestion`): otherwise the first packet an application sends to
   * the internal address starts the connection.
   */
  announce(
    a: { keyHash: Uint8Array; cryptoPort?: number; keyPort?: number },
    realAddress: number,
    name: string,
    answersQuestion = false,
  ): number | null {
    const id = hex(a.keyHash);
    const now = this.now();
    let entry = this.byKey.get(id);
    if (!entry) {
      const internal = this.allocateAddress();
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
        state: "idle",
        keyChannels: new Map(),
        retryAt: 0,
        held: new HeldPackets(),
        ciphertexts: [],
        refilling: false,
        tunnels: 0,
        past: { txBytes: 0, rxBytes: 0, lastActivity: 0 },
        lastUsed: now,
        waiting: false,
      };
      this.byKey.set(id, entry);
      this.byInternal.set(internal, entry);
      this.logs.line(
        "info",
        "new server",
        () =>
          `${name}: PQConnect server ${id.slice(0, 12)} at ${numberToIpv4(realAddress)} ` +
          `gets internal address ${numberToIpv4(internal)}`,
      );
    } else if (entry.realAddress !== realAddress) {
      if (entry.peer || entry.connection) {
        // A live tunnel (or one being made) stays where it is.
        entry.candidateAddress = realAddress;
        this.logs.line(
          "info",
          "other address",
          () =>
            `${name}: server ${id.slice(0, 12)} also announced at ${numberToIpv4(realAddress)}; ` +
            `kept at ${numberToIpv4(entry!.realAddress)} while its tunnel answers`,
        );
      } else {
        this.moveTo(entry, realAddress);
      }
    }
    entry.name = name;
    entry.lastUsed = now;
    if (a.cryptoPort !== undefined) entry.cryptoPort = a.cryptoPort;
    if (a.keyPort !== undefined) entry.keyPort = a.keyPort;
    if (answersQuestion && entry.state !== "up") this.connect(entry);
    return entry.internal;
  }

  /** A packet an application sent to an internal address. */
  onTunPacket(packet: Uint8Array): void {
    const now = this.now();
    const r = this.path.fromTun(packet, now);
    if (r.kind === "sent" || r.kind === "dropped") return;
    const entry = this.byInternal.get(r.destination);
    if (!entry) return this.drops.count("tun-no-server");
    entry.lastUsed = now;
    if (entry.state === "up") {
      // The session expired while idle: a fresh 0-RTT handshake, the packet waits for it.
      this.closeTunnel(entry);
      entry.state = "idle";
    }
    if (!entry.held.push(packet)) return this.drops.count("held-overflow");
    this.connect(entry);
  }

  /** One datagram on the client port. */
  onDatagram(data: Uint8Array, host: number, port: number): void {
    if (data.length < 2 || ((data[0] << 8) | data[1]) !== MSG_TUNNEL) {
      return this.drops.count("udp-not-tunnel");
    }
    const r = this.path.fromNetwork(data, host, port, this.now());
    if (r.kind === "unknown-tid") return this.drops.count("tunnel-unknown-tid");
    if (r.kind === "cookie") {
      const peer = r.peer;
      // A server sends a cookie again while we keep using the old epoch (the first may be
      // lost): one already adopted must not move the epoch a second time.
      if (peer.lastCookie !== undefined && equalBytes(peer.lastCookie, r.cookie)) {
        return this.drops.count("cookie-again");
      }
      // The server handed us our state: it goes back in front of our next packets.
      peer.lastCookie = r.cookie.slice();
      peer.cookie = peer.lastCookie;
      peer.cookieSends = 0;
      peer.session.adoptCookieEpoch(this.now());
      peer.cookieEpoch = peer.session.receiveEpoch;
      const entry = this.byInternal.get(peer.internal);
      this.log.info(`${entry?.name}: the server handed back our session as a cookie`);
    }
  }

  /**
   * Every timer in one place: connections (key request retransmissions, retries, giving up),
   * resends of the first packets, liveness and expiry of tunnels. The shell calls it at least
   * every TICK_SECONDS and at the times the device asks for through io.wakeAt.
   */
  tick(): void {
    const now = this.now();
    // Connections that waited for a slot, oldest first.
    for (const entry of this.waiting) {
      if (this.connecting >= this.maxConnecting) break;
      this.waiting.delete(entry);
      entry.waiting = false;
      this.connect(entry);
    }
    for (const entry of this.byKey.values()) {
      if (entry.connection) this.drive(entry);
      if (entry.resend && now >= entry.resend.at) this.resendFirstPackets(entry, now);
      // A tick that came early (for another deadline) answered our earlier wakeAt: the shell
      // keeps only the earliest time asked for, so the next resend is asked for again.
      if (entry.resend) this.io.wakeAt(entry.resend.at);
      if (entry.state === "up" && entry.peer) this.checkLiveness(entry, now);
    }
  }

  /** The rows of `pqconnect status`. */
  status(): ServerStatus[] {
    const now = this.now();
    return [...this.byKey.values()].map((s) => {
      const p = s.peer;
      const last = Math.max(s.past.lastActivity, p?.lastSeen ?? 0, p?.lastSent ?? 0);
      return {
        name: s.name,
        keyHash: s.id,
        external: numberToIpv4(s.realAddress),
        internal: numberToIpv4(s.internal),
        state: s.state,
        tunnelId: p ? hex(p.session.tid).slice(0, 8) : "",
        age: s.established === undefined ? null : now - s.established,
        lastActivity: last === 0 ? null : now - last,
        txBytes: s.past.txBytes + (p?.txBytes ?? 0),
        rxBytes: s.past.rxBytes + (p?.rxBytes ?? 0),
        tunnels: s.tunnels,
      };
    });
  }

  close(): void {
    for (const entry of this.byKey.values()) this.releaseKeys(entry);
  }

  /** Starts (once) making a tunnel to `entry`. */
  private connect(entry: ServerEntry): void {
    const now = this.now();
    if (entry.connection || now < entry.retryAt) return;
    if (this.connecting >= this.maxConnecting) {
      // Key downloads are capped: this one starts when a slot frees (tick()).
      if (!entry.waiting) {
        entry.waiting = true;
        this.waiting.add(entry);
        this.drops.count("connect-waiting");
      }
      return;
    }
    entry.state = "connecting";
    this.connecting++;
    entry.connection = new Connection(entry, this.config, this.random(32), now);
    this.drive(entry);
  }

  /** Does what the connection asks for now, and acts on where it got to. */
  private drive(entry: ServerEntry): void {
    const conn = entry.connection;
    if (!conn) return;
    const now = this.now();
    for (const task of conn.poll(now)) this.perform(entry, conn, task);
    if (conn.step === "done") return this.establish(entry, conn);
    if (conn.step === "failed") return this.connectionFailed(entry, conn);
    const at = conn.nextDeadline(now);
    if (at !== Infinity) this.io.wakeAt(at);
  }

  private perform(entry: ServerEntry, conn: Connection, task: ConnectionTask): void {
    // Answers come back later: they count only while this connection is still the entry's.
    const current = () => entry.connection === conn;
    const fail = (e: unknown) => {
      if (!current()) return;
      conn.fail((e as Error)?.message ?? String(e));
      this.drive(entry);
    };
    switch (task.kind) {
      case "resolve-ports":
        Promise.all([
          this.io.resolveTxt(task.cryptoName).catch(() => []),
          this.io.resolveTxt(task.keyName).catch(() => []),
        ]).then(([cryptoTxt, keyTxt]) => {
          if (!current()) return;
          conn.onPorts(cryptoTxt, keyTxt);
          this.drive(entry);
        }).catch(fail);
        return;
      case "key-request":
        this.keyChannel(entry, conn, task.conversation, task.host, task.port).send(task.datagram);
        return;
      case "register-long-term":
        this.crypto.registerMcEliecePk(task.mceliecePk).then((pkId) => {
          if (!current()) {
            // The entry went (or gave up) meanwhile: the worker must not keep the key.
            this.crypto.unregisterMcEliecePk(pkId).catch(() => {});
            return;
          }
          const f = conn.download!;
          conn.onLongTermRegistered(pkId);
          this.keyed.add(entry);
          this.limitKeyed(entry);
          this.log.info(
            `${entry.name}: long-term keys verified (${f.responsesAccepted} parts, ` +
              `${f.requestsSent} requests, ` +
              `${((this.now() - f.started) * 1000).toFixed(0)} ms, ` +
              `all parts in after ${(((f.finished ?? NaN) - f.started) * 1000).toFixed(0)} ms)`,
          );
          this.drive(entry);
        }).catch(fail);
        return;
      case "encapsulate":
        this.encapsulate(entry, task.pkId, task.sntrupPk).then(([mc, nt]) => {
          if (!current()) return wipe(mc.sharedSecret, nt.sharedSecret);
          conn.onEncapsulated(mc, nt);
          this.drive(entry);
        }).catch(fail);
        return;
    }
  }

  /**
   * A precomputed McEliece ciphertext if there is one, and a fresh sntrup761 one. Both are asked
   * for in the same turn, so a first handshake waits for one crypto-worker round trip, not two.
   */
  private async encapsulate(
    entry: ServerEntry,
    pkId: number,
    sntrupPk: Uint8Array,
  ): Promise<[Encapsulation, Encapsulation]> {
    const stocked = entry.ciphertexts.shift();
    const [mc, nt] = await Promise.allSettled([
      stocked ?? this.crypto.mcelieceEncap(pkId),
      this.crypto.sntrupEncap(sntrupPk),
    ]);
    if (mc.status === "fulfilled" && nt.status === "fulfilled") return [mc.value, nt.value];
    if (mc.status === "fulfilled") wipe(mc.value.sharedSecret);
    if (nt.status === "fulfilled") wipe(nt.value.sharedSecret);
    throw (mc.status === "rejected" ? mc.reason : (nt as PromiseRejectedResult).reason);
  }

  private keyChannel(
    entry: ServerEntry,
    conn: Connection,
    conversation: KeyConversation,
    host: number,
    port: number,
  ): KeyChannel {
    let channel = entry.keyChannels.get(conversation);
    if (!channel) {
      channel = this.io.openKeyChannel(host, port, (datagram, more) => {
        if (entry.connection !== conn) return;
        conn.onKeyResponse(conversation, datagram, this.now());
        // Once per batch: drive() looks at every request in flight.
        if (!more) this.drive(entry);
      });
      entry.keyChannels.set(conversation, channel);
    }
    return channel;
  }

  /** The handshake message goes out, the held packets right behind it. */
  private establish(entry: ServerEntry, conn: Connection): void {
    const result = conn.result!;
    this.endConnection(entry);
    const now = this.now();
    this.closeTunnel(entry);
    // The initiator sends with the initiator-to-responder root.
    const session = TunnelSession.create(result.tid, result.i2r, result.r2i, now);
    const peer = newPeer(session, entry.internal, entry.realAddress, entry.cryptoPort!, now);
    this.path.peers.add(peer);
    entry.peer = peer;
    if (this.io.sendUdp(result.message, peer.host, peer.port) === false) {
      this.drops.count("udp-send-failed");
    }
    entry.state = "up";
    entry.established = now;
    entry.tunnels++;
    this.log.info(
      `${entry.name}: tunnel ${hex(session.tid).slice(0, 12)} up ` +
        `(${((now - conn.started) * 1000).toFixed(0)} ms)`,
    );
    const held = entry.held.take();
    for (const p of held) this.path.send(peer, p, now);
    if (held.length > 0) {
      entry.resend = {
        peer,
        packets: held,
        attempt: 0,
        at: now + RESEND_DELAYS_SECONDS[0],
        initiation: result.message,
        initiationAt: now,
      };
      this.io.wakeAt(entry.resend.at);
    }
    this.refill(entry);
  }

  private connectionFailed(entry: ServerEntry, conn: Connection): void {
    this.endConnection(entry);
    entry.state = "failed";
    entry.retryAt = this.now() + RETRY_SECONDS;
    // The address we tried did not work: the next attempt goes to the other one announced.
    if (entry.candidateAddress !== undefined) this.moveTo(entry, entry.candidateAddress);
    for (const _ of entry.held.take()) this.drops.count("held-connect-failed");
    this.log.warn(
      `${entry.name}: no tunnel to ${numberToIpv4(entry.realAddress)}: ${conn.failure}`,
    );
  }

  private endConnection(entry: ServerEntry): void {
    if (entry.connection) this.connecting--;
    entry.connection?.fail("stopped");
    entry.connection = undefined;
    for (const c of entry.keyChannels.values()) c.close();
    entry.keyChannels.clear();
  }

  /**
   * The reference server creates a session only once its handshake threads finish and drops
   * tunnel packets that overtake that, so the packets sent right behind the handshake are sent
   * again (fresh counters) a few times until the server is heard from. Duplicates are harmless
   * to IP; a lost first SYN costs the application a whole second.
   */
  private resendFirstPackets(entry: ServerEntry, now: number): void {
    const r = entry.resend!;
    if (entry.peer !== r.peer || r.peer.rxPackets > 0 || !r.peer.session.alive(now)) {
      entry.resend = undefined;
      return;
    }
    if (now - r.initiationAt >= INITIATION_RESEND_SECONDS) {
      r.initiationAt = now;
      this.initiationsResent++;
      if (this.io.sendUdp(r.initiation, r.peer.host, r.peer.port) === false) {
        this.drops.count("udp-send-failed");
      }
    }
    this.resent += r.packets.length;
    for (const p of r.packets) this.path.send(r.peer, p, now);
    if (++r.attempt < RESEND_DELAYS_SECONDS.length) {
      r.at = now + RESEND_DELAYS_SECONDS[r.attempt];
      this.io.wakeAt(r.at);
    } else {
      entry.resend = undefined;
    }
  }

  /** Expired sessions close; a server that stopped answering gets a new tunnel. */
  private checkLiveness(entry: ServerEntry, now: number): void {
    const peer = entry.peer!;
    if (!peer.session.alive(now)) {
      this.closeTunnel(entry);
      entry.state = "idle";
      return;
    }
    const silent = peer.unanswered >= SILENT_PACKETS && now - peer.lastSeen > SILENCE_SECONDS &&
      now - peer.lastSent < SILENCE_SECONDS;
    if (silent) {
      this.log.warn(
        `${entry.name}: no answer for ${(now - peer.lastSeen).toFixed(0)} s; making a new tunnel`,
      );
      this.closeTunnel(entry);
      entry.state = "idle";
      entry.retryAt = 0;
      if (entry.candidateAddress !== undefined) this.moveTo(entry, entry.candidateAddress);
      this.connect(entry);
    }
  }

  /** Keeps a few McEliece ciphertexts ready for this server (in the background, bounded). */
  private refill(entry: ServerEntry): void {
    if (entry.refilling || !entry.longTerm || this.config.precomputed === 0) return;
    entry.refilling = true;
    (async () => {
      while (entry.longTerm && entry.ciphertexts.length < this.config.precomputed) {
        const pkId = entry.longTerm.pkId;
        const ct = await this.crypto.mcelieceEncap(pkId);
        if (entry.longTerm?.pkId !== pkId) {
          wipe(ct.sharedSecret); // the keys were released meanwhile
          break;
        }
        entry.ciphertexts.push(ct);
      }
    })()
      .catch((e) => this.log.debug(`${entry.name}: precomputing ciphertexts stopped: ${e}`))
      .finally(() => entry.refilling = false);
  }

  /** The next handshake goes to `address` (no tunnel is live). */
  private moveTo(entry: ServerEntry, address: number): void {
    if (address === entry.realAddress) {
      entry.candidateAddress = undefined;
      return;
    }
    this.logs.line(
      "info",
      "moved",
      () => `${entry.name}: server ${entry.id.slice(0, 12)} now tried at ${numberToIpv4(address)}`,
    );
    entry.realAddress = address;
    entry.keyHost = undefined;
    entry.candidateAddress = undefined;
  }

  /**
   * A free internal address. When the table or the subnet is full, the least recently used
   * entry without a live tunnel is evicted; its address rests in quarantine first, so an
   * application still holding it (DNS caches) does not reach another server at once.
   */
  private allocateAddress(): number | null {
    const now = this.now();
    while (this.byKey.size >= this.maxServers) {
      if (!this.evictOne()) return null;
    }
    const fresh = this.pool.allocate();
    if (fresh !== null) return fresh;
    const rested = this.quarantine[0];
    if (rested === undefined || now - rested.since < QUARANTINE_SECONDS) this.evictOne();
    // Out of rested addresses: the oldest quarantined one is better than no tunnel at all.
    const q = this.quarantine.shift();
    if (q === undefined) return null;
    this.pool.release(q.address);
    return this.pool.allocate();
  }

  /** Evicts the least recently used entry without a live tunnel; false when there is none. */
  private evictOne(): boolean {
    let victim: ServerEntry | undefined;
    for (const e of this.byKey.values()) {
      if (e.peer || e.state === "up") continue;
      if (!victim || e.lastUsed < victim.lastUsed) victim = e;
    }
    if (!victim) return false;
    this.remove(victim);
    this.evicted++;
    this.drops.count("server-evicted");
    return true;
  }

  private remove(entry: ServerEntry): void {
    this.releaseKeys(entry);
    for (const _ of entry.held.take()) this.drops.count("held-evicted");
    this.waiting.delete(entry);
    this.byKey.delete(entry.id);
    this.byInternal.delete(entry.internal);
    this.quarantine.push({ address: entry.internal, since: this.now() });
    if (this.quarantine.length > this.maxServers) {
      this.pool.release(this.quarantine.shift()!.address);
    }
  }

  /** Ends the entry's connection and tunnel, wipes its ciphertexts, unregisters its key. */
  private releaseKeys(entry: ServerEntry): void {
    this.endConnection(entry);
    this.closeTunnel(entry);
    for (const c of entry.ciphertexts) wipe(c.sharedSecret);
    entry.ciphertexts = [];
    if (entry.longTerm) {
      this.crypto.unregisterMcEliecePk(entry.longTerm.pkId).catch(() => {});
      entry.longTerm = undefined;
    }
    this.keyed.delete(entry);
    entry.state = "idle";
  }

  /** At most maxKeyed entries keep long-term keys; `keep` just got its own. */
  private limitKeyed(keep: ServerEntry): void {
    while (this.keyed.size > this.maxKeyed) {
      let victim: ServerEntry | undefined;
      for (const e of this.keyed) {
        if (e === keep || e.peer || e.connection) continue;
        if (!victim || e.lastUsed < victim.lastUsed) victim = e;
      }
      if (!victim) return;
      this.releaseKeys(victim);
      this.drops.count("long-term-keys-released");
    }
  }

  private closeTunnel(entry: ServerEntry): void {
    const peer = entry.peer;
    if (!peer) return;
    this.path.peers.remove(peer);
    peer.session.close();
    entry.past.txBytes += peer.txBytes;
    entry.past.rxBytes += peer.rxBytes;
    entry.past.lastActivity = Math.max(entry.past.lastActivity, peer.lastSeen, peer.lastSent);
    entry.peer = undefined;
    entry.resend = undefined;
  }
}
