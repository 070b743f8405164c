// The server's packet logic, between the network and the TUN device. It owns the sessions, the
// handshake responder and the cookie logic; IO and slow crypto come in through interfaces, so
// the same code runs in the daemon and in tests. Nothing here throws on bad input: every drop
// is counted under a reason.

import { COOKIE_BYTES, MSG_INITIATION, MSG_TUNNEL, TUNNEL_OVERHEAD } from "../core/constants.ts";
import { parseInitiation } from "../core/handshake.ts";
import { tidKeyAt, TunnelSession } from "../core/session.ts";
import { DataPath, newPeer, type Peer, type PeerTable, type TunnelIo } from "../core/data_path.ts";
import { buildCookie, type CookieKeyring, isCookie } from "../core/cookie.ts";
import { ReplayCache, replayCapacityFor } from "../core/replay.ts";
import { HandshakeQueue, InitiationLimiter } from "../core/admission.ts";
import type { HandshakeResult } from "../core/handshake.ts";
import type { ResponderOutcome } from "../core/responder.ts";
import type { EphemeralKeyStore } from "../core/ephemeral.ts";
import { AddressPool } from "../core/addresses.ts";
import { numberToIpv4 } from "../core/ip.ts";
import { DropCounters, LineBudget, type Logger } from "../core/log.ts";
import { hex, readU16be, wipe } from "../core/bytes.ts";

/** The server's wires are the tunnel's: the packet loop implements them. */
export type ServerIo = TunnelIo;

/**
 * The slow part of a handshake, run off the packet path: the whole responder
 * (lib/core/responder.ts) in a crypto worker that holds the server's and the live slots' secrets.
 */
export interface ResponderCrypto {
  /**
   * Starts one handshake; `done` is called later from the packet loop, a few replies per round
   * between socket reads (CryptoPool.finishDeferred). False if refused at once (`done` is then
   * never called).
   */
  respondDeferred(
    /** Handed over: the implementation may move its buffer away (CryptoPool does). */
    initiation: Uint8Array,
    slots: number[],
    done: (reply: RespondReply | null, error?: Error) => void,
  ): boolean;
}

export type RespondReply = ResponderOutcome | { ok: false; reason: "malformed" };

export interface ServerConfig {
  /** The TUN device's own address; clients get the others of its subnet. */
  tunAddress: number;
  prefix: number;
  /** Where decrypted packets are addressed (-H); default the TUN address. */
  hostAddress: number;
  maxPeers: number;
  /** Handshakes being decapsulated at once (a few per crypto worker); the rest wait in a queue. */
  maxPendingHandshakes: number;
  /** Handshakes waiting for a decapsulation slot (default 512); more are dropped. */
  handshakeQueue?: number;
  /** Initiations per second per source address (default 3), and the burst allowed (6). */
  initiationRate?: number;
  initiationBurst?: number;
  /** 8 random bytes keying the replay cache's fingerprints (lib/core/replay.ts). */
  replayHashKey: Uint8Array;
  /** Crypto workers (default 1): the replay cache is sized for all of them at full speed. */
  cryptoWorkers?: number;
  /** Replay entries kept at most (default replayCapacityFor(cryptoWorkers)). */
  replayCapacity?: number;
}

/** Early (0-RTT) packets from a client whose handshake is queued or being processed. */
const HELD_PER_CLIENT = 8;
const HELD_SECONDS = 2;
/**
 * "tunnel up" and "tunnel closed" lines written one by one per second, each; past that they are
 * counted, then summed once a second. Under a handshake flood a write to stderr per tunnel cost
 * the packet thread a tenth of its time; with a full table every new tunnel also closes one.
 */
const TUNNEL_LINES_PER_SECOND = 20;
/** Over-rate initiations admitted per second per decapsulation slot, while none is queued. */
const OVERDRAFT_PER_SLOT = 0.5;
/** A queued handshake older than this is dropped unstarted: its 0-RTT packets would be gone. */
const QUEUE_MAX_AGE = HELD_SECONDS / 2;
/**
 * An evicted tunnel lingers this long, capped at its cookie's epoch: what the client sends
 * before the cookie reaches it still arrives, and replies still go out. At most MAX_LINGERING
 * at once (the oldest ends first); each holds its internal address, which a resume takes over.
 */
const LINGER_SECONDS = 10;
const MAX_LINGERING = 256;

/**
 * Tunnels kept at most and lingering ones at most, for `maxPeers` asked and a pool of `addresses`:
 * a lingering tunnel holds its address, so the live ones leave room for them. With as many peers
 * as addresses (the default --max-peers 65536 on a /16), the pool ran out before the table was
 * full: each new tunnel then ended a lingering one to take its address, and an evicted client
 * that came back with its cookie got another address (its connections broke).
 */
export function peerLimits(
  maxPeers: number,
  addresses: number,
): { peers: number; lingering: number } {
  const lingering = Math.max(1, Math.min(MAX_LINGERING, Math.floor(addresses / 4)));
  return { peers: Math.max(1, Math.min(maxPeers, addresses - lingering)), lingering };
}
/**
 * After a resume the lingering session stays this long, receive-only, for packets of its epochs
 * the client sent before it saw the cookie and the network put behind the resume. It is capped
 * at the cookie's epoch and the resumed session starts at the next, so no key is in both, and
 * each of its keys still opens one packet. It ends with the resumed tunnel's peer, so it never
 * delivers from an address another client got since.
 */
const RESUMED_SECONDS = 2;
/** A lingering client still sending in the old epoch has not got its cookie: send it again. */
const COOKIE_RESEND_SECONDS = 0.25;
const MAX_COOKIE_RESENDS = 8;

/** One initiation between admission and the end of its decapsulation. */
interface HandshakeJob {
  /** The initiation, a private copy handed over to the responder when it starts. */
  data: Uint8Array;
  host: number;
  port: number;
  /** host * 65536 + port: the client address as one number. */
  source: number;
  c0Key: number;
  arrived: number;
}

interface HeldPacket {
  tidKey: string;
  data: Uint8Array;
  until: number;
}

/** An evicted tunnel whose cookie is on its way (see LINGER_SECONDS). */
/** A lingering tunnel after its resume (see RESUMED_SECONDS). */
interface Resumed {
  peer: Peer;
  /** The cookie's epoch: packets of it and older ones are this session's. */
  epoch: number;
  until: number;
}

interface Lingering {
  peer: Peer;
  /** The cookie it was handed (sealed again for a resend; no secret in the clear). */
  cookie: Uint8Array;
  until: number;
  sentAt: number;
  resends: number;
}

export class ServerDevice {
  readonly drops = new DropCounters();
  private readonly path: DataPath;
  /** The lingering tunnels' own data path, consulted only for tids and addresses `path` lacks. */
  private readonly lingerPath: DataPath;
  /** By tid key, oldest first. */
  private readonly lingering = new Map<string, Lingering>();
  /** Lingering tunnels resumed from their cookie, by tid key, oldest first; their data path. */
  private readonly resumed = new Map<string, Resumed>();
  private readonly resumedPath: DataPath;
  /** Packets of an epoch before a resume that arrived after it and were delivered. */
  lateAfterResume = 0;
  readonly replay: ReplayCache;
  private readonly pool: AddressPool;
  /** Live tunnels kept, and lingering ones, at most (peerLimits). */
  readonly maxPeers: number;
  private readonly maxLingering: number;
  private readonly limiter: InitiationLimiter;
  /** One global bucket for initiations beyond their address's rate (see overdraw). */
  private readonly overdraft: InitiationLimiter;
  private readonly queue: HandshakeQueue<HandshakeJob>;
  /** c0 of every queued or running handshake: a replayed copy is refused before any work. */
  private readonly inFlightC0 = new Set<number>();
  /** Per client address (host * 65536 + port): its handshakes not yet finished, and its held
   * packets. */
  private readonly clients = new Map<number, { handshakes: number; held: HeldPacket[] }>();
  private running = 0;
  handshakes = 0;
  resumes = 0;
  private readonly upLines = new LineBudget(TUNNEL_LINES_PER_SECOND);
  private readonly closedLines = new LineBudget(TUNNEL_LINES_PER_SECOND);
  /** Sees each handshake's secrets after they were erased (tests check they are zero). */
  onHandshakeSecrets?: (secrets: readonly Uint8Array[]) => void;

  constructor(
    private readonly config: ServerConfig,
    private readonly io: ServerIo,
    private readonly crypto: ResponderCrypto,
    readonly ephemeral: EphemeralKeyStore,
    private readonly cookies: CookieKeyring,
    private readonly log: Logger,
    /** Monotonic seconds for sessions, and wall-clock seconds for ephemeral key slots. */
    private readonly clock: { mono(): number; wall(): number },
  ) {
    this.pool = new AddressPool(config.tunAddress, config.prefix);
    const limits = peerLimits(config.maxPeers, this.pool.size);
    this.maxPeers = limits.peers;
    this.maxLingering = limits.lingering;
    this.path = new DataPath(io, this.drops, { deliverTo: config.hostAddress, roaming: true });
    this.lingerPath = new DataPath(io, this.drops, {
      deliverTo: config.hostAddress,
      roaming: true,
    });
    // it never sends: where the client is now is the resumed peer's business
    this.resumedPath = new DataPath(io, this.drops, {
      deliverTo: config.hostAddress,
      roaming: false,
    });
    this.limiter = new InitiationLimiter(config.initiationRate, config.initiationBurst);
    const overdraft = OVERDRAFT_PER_SLOT * config.maxPendingHandshakes;
    this.overdraft = new InitiationLimiter(overdraft, Math.max(1, overdraft), 1);
    this.queue = new HandshakeQueue(config.handshakeQueue ?? 512, QUEUE_MAX_AGE);
    const replayCapacity = config.replayCapacity ?? replayCapacityFor(config.cryptoWorkers ?? 1);
    this.replay = new ReplayCache(config.replayHashKey, replayCapacity);
  }

  get peers(): PeerTable {
    return this.path.peers;
  }

  /** Evicted tunnels waiting for their cookie to come back (see LINGER_SECONDS). */
  get lingeringPeers(): PeerTable {
    return this.lingerPath.peers;
  }

  /** Handshakes waiting, and being decapsulated. */
  get handshakeLoad(): { queued: number; running: number } {
    return { queued: this.queue.length, running: this.running };
  }

  /**
   * Initiations worth reading now: the room left in the queue, 0 while it is full and a running
   * handshake will free a slot (none running: nothing would, so reading goes on). The daemon
   * reads no more than this from its initiation socket and leaves the rest to wait there, where
   * the kernel sheds what does not fit: one read now would only be refused as busy.
   */
  get initiationRoom(): number {
    return this.running > 0 ? this.queue.capacity - this.queue.length : Infinity;
  }

  /** One datagram from the crypto port. */
  onDatagram(data: Uint8Array, host: number, port: number): void {
    if (data.length < 2) return this.drops.count("short");
    const type = (data[0] << 8) | data[1];
    if (type === MSG_TUNNEL) return this.onTunnelPacket(data, host, port);
    if (type === MSG_INITIATION) return this.onInitiation(data, host, port);
    if (isCookie(data)) return this.onCookie(data, host, port);
    this.drops.count("unknown-type");
  }

  private onTunnelPacket(data: Uint8Array, host: number, port: number): void {
    if (this.resumed.size !== 0 && this.onResumedPacket(data, host, port)) return;
    const r = this.path.fromNetwork(data, host, port, this.clock.mono());
    if (r.kind === "unknown-tid") {
      // By the lingering peers' numeric index, not a string key: with a full table there are
      // always lingering tunnels, and a flood's datagrams would each build one.
      const lp = this.lingering.size === 0 ? undefined : this.lingerPath.peers.byTunnelIdIn(data);
      const l = lp === undefined ? undefined : this.lingering.get(lp.tidKey);
      if (l) return this.onLingeringPacket(l, data, host, port);
      return this.hold(data, host, port);
    }
    if (r.kind === "cookie") return this.drops.count("cookie-from-client");
    if (r.kind === "dropped" && r.reason === "tunnel-expired" && r.peer) {
      this.removePeer(r.peer, "expired");
    }
  }

  /**
   * A packet of an evicted tunnel (its cookie on the way, or lost): delivered, and when the
   * client keeps sending in the old epoch a while after the cookie left, the cookie again.
   * Only authenticated packets cause a resend, a few per tunnel.
   */
  private onLingeringPacket(l: Lingering, data: Uint8Array, host: number, port: number): void {
    const now = this.clock.mono();
    const r = this.lingerPath.fromNetwork(data, host, port, now);
    if (r.kind === "cookie") return this.drops.count("cookie-from-client");
    if (r.kind === "dropped" && r.reason === "tunnel-expired") return this.endLinger(l);
    if (r.kind !== "delivered") return;
    if (now - l.sentAt < COOKIE_RESEND_SECONDS || l.resends >= MAX_COOKIE_RESENDS) return;
    l.sentAt = now;
    l.resends++;
    this.sendCookie(l.peer, l.cookie, now);
  }

  /**
   * A packet of an epoch up to a resumed cookie's goes to the session that lingered (the resumed
   * one starts after it and could not open it); false for any other packet.
   */
  private onResumedPacket(data: Uint8Array, host: number, port: number): boolean {
    if (data.length < TUNNEL_OVERHEAD) return false;
    const p = this.resumedPath.peers.byTunnelIdIn(data);
    const o = p === undefined ? undefined : this.resumed.get(p.tidKey);
    if (o === undefined || readU16be(data, 34) > o.epoch) return false;
    const r = this.resumedPath.fromNetwork(data, host, port, this.clock.mono());
    if (r.kind === "cookie") this.drops.count("cookie-from-client");
    else if (r.kind === "delivered") this.lateAfterResume++;
    return true;
  }

  /** Ends a resumed tunnel's old session: its keys erased (its address is the resumed one's). */
  private endResumed(o: Resumed): void {
    this.resumed.delete(o.peer.tidKey);
    this.resumedPath.peers.remove(o.peer);
    o.peer.session.close();
  }

  /** The resumed tunnel with this tid goes: the old session that stayed behind goes too. */
  private endResumedOf(tidKey: string): void {
    const o = this.resumed.size === 0 ? undefined : this.resumed.get(tidKey);
    if (o) this.endResumed(o);
  }

  private sendCookie(peer: Peer, cookie: Uint8Array, now: number): void {
    try {
      this.io.sendUdp(peer.session.sealPacket(cookie, now), peer.host, peer.port);
    } catch {
      // its epoch ran out (the session is capped) or a send error: the client makes a new tunnel
      this.drops.count("cookie-send-failed");
    }
  }

  /** Ends a lingering tunnel: its keys erased, its address free. */
  private endLinger(l: Lingering): void {
    this.lingering.delete(l.peer.tidKey);
    this.lingerPath.peers.remove(l.peer);
    this.pool.release(l.peer.internal);
    l.peer.session.close();
  }

  /**
   * Keeps early 0-RTT packets of a client whose handshake is queued or running, a few per
   * client address, so a flood of packets for unknown tunnels cannot crowd out a real client's.
   * A full list lets its oldest go: an address that keeps a handshake in flight (a busy one
   * under overload) would otherwise keep its first 8 packets, long stale, and refuse the one
   * that came right behind the handshake now being answered.
   */
  private hold(data: Uint8Array, host: number, port: number): void {
    const client = this.clients.get(host * 65536 + port);
    if (!client) return this.drops.count("tunnel-unknown-tid");
    if (client.held.length >= HELD_PER_CLIENT) {
      client.held.shift();
      this.drops.count("tunnel-held-overflow");
    }
    const tidKey = tidKeyAt(data, 2);
    client.held.push({ tidKey, data: data.slice(), until: this.clock.mono() + HELD_SECONDS });
  }

  /** Admission: parse, replay check, rate limit, queue. No decapsulation happens here. */
  private onInitiation(data: Uint8Array, host: number, port: number): void {
    // Under overload this is the common case: refuse it before spending anything on it, even
    // a parse (a malformed initiation is then counted as busy).
    if (this.queue.full) return this.drops.count("handshake-busy");
    const parsed = parseInitiation(data);
    if (!parsed) return this.drops.count("handshake-malformed");
    const now = this.clock.mono();
    // Replays first: refusing one costs a lookup, and it should not spend the sender's tokens.
    const c0Key = this.replay.keyOf(parsed.c0);
    if (this.replay.hasKey(c0Key, now)) return this.drops.count("handshake-replay");
    if (this.inFlightC0.has(c0Key)) return this.drops.count("handshake-replay");
    if (!this.limiter.allow(host, now) && !this.overdraw(now)) {
      return this.drops.count("handshake-rate-limited");
    }
    const copy = data.slice(); // the receive buffer is reused
    const source = host * 65536 + port;
    this.queue.push({ data: copy, host, port, source, c0Key, arrived: now }, now);
    this.inFlightC0.add(c0Key);
    const client = this.clients.get(source);
    if (client) client.handshakes++;
    else this.clients.set(source, { handshakes: 1, held: [] });
    this.startHandshakes();
  }

  /**
   * An initiation from an address over its rate still gets in while nothing waits for a
   * decapsulation slot, up to a global rate (OVERDRAFT_PER_SLOT a second per slot). pq1 has no
   * return-routability check: anyone can send from a real client's address and empty that
   * address's bucket. With the overdraft, locking a client out takes more than that rate in
   * over-rate initiations (native KEMs: 128/s; WebAssembly: 2/s), not 3/s; the work it admits is bounded by the
   * same rate and only fills slots no admitted handshake is waiting for.
   */
  private overdraw(now: number): boolean {
    return this.queue.length === 0 && this.overdraft.allow(0, now);
  }

  /** Fills the decapsulation slots from the queue; stale entries are dropped unstarted. */
  private startHandshakes(): void {
    while (this.running < this.config.maxPendingHandshakes) {
      const job = this.queue.take(this.clock.mono(), (stale) => {
        this.drops.count("handshake-expired");
        this.endHandshake(stale);
      });
      if (!job) return;
      if (!this.respond(job)) return;
    }
  }

  /**
   * Hands one job to the workers; its end runs synchronously in the callback (no promise, so it
   * finishes in the packet loop's round that hands the reply over, not in a later turn).
   */
  private respond(job: HandshakeJob): boolean {
    const slots = this.ephemeral.live(this.clock.wall()).map((k) => k.slot);
    const sent = this.crypto.respondDeferred(job.data, slots, (r, error) => {
      const secrets: Uint8Array[] = [];
      try {
        if (r === null) {
          this.drops.count("handshake-rejected");
          this.log.debug(
            `handshake from ${numberToIpv4(job.host)}:${job.port} rejected: ${error}`,
          );
        } else {
          const result = this.acceptReply(r, secrets);
          if (result) this.finishHandshake(job, result);
        }
      } catch (e) {
        this.drops.count("handshake-rejected");
        this.log.debug(`handshake from ${numberToIpv4(job.host)}:${job.port} failed: ${e}`);
      } finally {
        wipe(...secrets);
        this.onHandshakeSecrets?.(secrets);
        this.running--;
        this.endHandshake(job);
        this.startHandshakes();
      }
    });
    if (!sent) {
      this.drops.count("handshake-busy");
      this.endHandshake(job);
      return false;
    }
    this.running++;
    return true;
  }

  /** A handshake is over: forget its c0, and its client's held packets once none is left. */
  private endHandshake(job: HandshakeJob): void {
    this.inFlightC0.delete(job.c0Key);
    const client = this.clients.get(job.source);
    if (!client || --client.handshakes > 0) return;
    this.clients.delete(job.source);
    for (const _ of client.held) this.drops.count("tunnel-held-unmatched");
  }

  /** Hands the held packets of a new tunnel to it, in arrival order. */
  private releaseHeld(source: number, tidKey: string): void {
    const client = this.clients.get(source);
    if (!client) return;
    const now = this.clock.mono();
    const mine = client.held.filter((h) => h.tidKey === tidKey);
    client.held = client.held.filter((h) => h.tidKey !== tidKey);
    const host = Math.floor(source / 65536);
    const port = source % 65536;
    for (const h of mine) {
      if (h.until > now) this.onTunnelPacket(h.data, host, port);
      else this.drops.count("tunnel-held-expired");
    }
  }

  /** The decapsulations are done: replay check, the new tunnel, its held packets. */
  private finishHandshake(job: HandshakeJob, result: HandshakeResult): void {
    const { host, port, c0Key } = job;
    const now = this.clock.mono();
    if (this.replay.hasKey(c0Key, now)) return this.drops.count("handshake-replay");
    if (!this.replay.addKey(c0Key, now)) return this.drops.count("handshake-replay-full");
    // The responder sends with the responder-to-initiator root (the session erases both).
    const session = TunnelSession.create(result.tid, result.r2i, result.i2r, now);
    const tidKey = tidKeyAt(result.tid, 0);
    this.addSession(session, tidKey, host, port, now);
    this.handshakes++;
    this.logUp(result.tid, host, port, now - job.arrived, now);
    this.releaseHeld(job.source, tidKey);
  }

  /** One line per new tunnel, up to TUNNEL_LINES_PER_SECOND a second; tick() sums the rest. */
  private logUp(tid: Uint8Array, host: number, port: number, took: number, now: number): void {
    if (!this.upLines.take(now, "up")) return;
    this.log.info(
      `tunnel ${hex(tid).slice(0, 12)} up with ${numberToIpv4(host)}:${port} ` +
        `(${(took * 1000).toFixed(0)} ms)`,
    );
  }

  /** A worker's answer: a refusal counted, or the result with its roots filed for erasure. */
  private acceptReply(r: RespondReply, secrets: Uint8Array[]): HandshakeResult | null {
    if (!r.ok) {
      this.drops.count(r.reason === "slot-expired" ? "handshake-slot-expired" : "handshake-auth");
      return null;
    }
    secrets.push(r.i2r, r.r2i);
    return r;
  }

  /**
   * A returning cookie, alone or in front of a tunnel packet: rebuild the session it holds at
   * the next epoch, then handle the packet.
   */
  private onCookie(data: Uint8Array, host: number, port: number): void {
    if (data.length < COOKIE_BYTES) return this.drops.count("cookie-short");
    // Once per cookie, for the whole life of its key: a replayed cookie would rebuild a session
    // whose keys were already used (keystream reuse) and deliver its packet a second time.
    const r = this.cookies.redeem(data.subarray(0, COOKIE_BYTES));
    if (!r.ok) {
      this.drops.count(`cookie-${r.reason}`);
      // the packet behind it stands on its own: its session (if any) refuses replays
      if (data.length > COOKIE_BYTES) this.onDatagram(data.subarray(COOKIE_BYTES), host, port);
      return;
    }
    const contents = r.contents;
    const tidKey = tidKeyAt(contents.tid, 0);
    const now = this.clock.mono();
    if (!this.peers.byTunnelId(tidKey)) {
      // The tunnel may still linger: the rebuilt session takes over its address (the server's
      // applications see the same client), its capped keys are erased.
      const l = this.lingering.get(tidKey);
      let internal: number | undefined;
      if (l) {
        this.lingering.delete(tidKey);
        this.lingerPath.peers.remove(l.peer);
        internal = l.peer.internal;
        this.keepResumed(l.peer, contents.epoch, now);
      }
      const session = TunnelSession.fromCookie(
        contents.tid,
        contents.epoch,
        contents.sendRoot,
        contents.recvRoot,
        now,
      );
      this.addSession(session, tidKey, host, port, now, internal);
      this.resumes++;
      this.log.info(`tunnel ${hex(contents.tid).slice(0, 12)} resumed from a cookie`);
    }
    wipe(contents.sendRoot, contents.recvRoot);
    if (data.length > COOKIE_BYTES) this.onDatagram(data.subarray(COOKIE_BYTES), host, port);
  }

  /** Keeps a lingering tunnel's session receive-only for a while after its resume. */
  private keepResumed(peer: Peer, epoch: number, now: number): void {
    this.endResumedOf(peer.tidKey);
    if (this.resumed.size >= MAX_LINGERING) this.endResumed(this.resumed.values().next().value!);
    this.resumed.set(peer.tidKey, { peer, epoch, until: now + RESUMED_SECONDS });
    this.resumedPath.peers.add(peer);
  }

  private addSession(
    session: TunnelSession,
    tidKey: string,
    host: number,
    port: number,
    now: number,
    /** An address the tunnel already holds (a resumed lingering tunnel's). */
    reuse?: number,
  ): void {
    const old = this.peers.byTunnelId(tidKey);
    if (old) this.removePeer(old, "replaced");
    if (this.peers.size >= this.maxPeers) this.evictWithCookie();
    let internal = reuse ?? this.allocateAddress();
    if (internal === null) {
      this.evictWithCookie();
      internal = this.allocateAddress();
    }
    if (internal === null) {
      session.close();
      this.drops.count("no-address");
      return;
    }
    this.peers.add(newPeer(session, internal, host, port, now));
  }

  /** A free internal address; lingering tunnels give theirs back first when none is left. */
  private allocateAddress(): number | null {
    let internal = this.pool.allocate();
    for (const l of this.lingering.values()) {
      if (internal !== null) break;
      this.drops.count("linger-no-address");
      this.endLinger(l);
      internal = this.pool.allocate();
    }
    return internal;
  }

  /**
   * Frees room: the least recently used client gets its state back as a cookie, and its tunnel
   * lingers, capped at the cookie's epoch, until the cookie comes back or LINGER_SECONDS pass.
   */
  private evictWithCookie(): void {
    const lru = this.peers.leastRecentlyUsed();
    if (!lru) return;
    const now = this.clock.mono(); // the cookie's state and its packet: one moment
    const state = lru.session.cookieState(now);
    const issued = state && this.cookies.issue(this.clock.wall());
    if (!issued || !state) {
      if (state) wipe(state.sendRoot, state.recvRoot);
      return this.removePeer(lru, "evicted");
    }
    const cookie = buildCookie(issued.key, issued.nonce, issued.timestamp, {
      tid: lru.session.tid,
      ...state,
    });
    wipe(state.sendRoot, state.recvRoot);
    lru.session.capAtCookieEpoch();
    this.sendCookie(lru, cookie, now);
    this.peers.remove(lru);
    this.endResumedOf(lru.tidKey);
    this.logClosed(lru, "evicted with a cookie");
    if (this.lingering.size >= this.maxLingering) {
      this.drops.count("linger-overflow");
      this.endLinger(this.lingering.values().next().value!);
    }
    this.lingering.set(lru.tidKey, {
      peer: lru,
      cookie,
      until: now + LINGER_SECONDS,
      sentAt: now,
      resends: 0,
    });
    this.lingerPath.peers.add(lru);
  }

  removePeer(peer: Peer, why: string): void {
    this.peers.remove(peer);
    this.pool.release(peer.internal);
    peer.session.close();
    this.endResumedOf(peer.tidKey);
    this.logClosed(peer, why);
  }

  /** One line per closed tunnel, up to TUNNEL_LINES_PER_SECOND a second; tick() sums the rest. */
  private logClosed(peer: Peer, why: string): void {
    if (!this.closedLines.take(this.clock.mono(), why)) return;
    this.log.info(
      `tunnel ${hex(peer.session.tid).slice(0, 12)} (${
        numberToIpv4(peer.internal)
      }) closed: ${why}`,
    );
  }

  /** One packet read from the TUN device: into the tunnel of the client it is addressed to. */
  onTunPacket(packet: Uint8Array): void {
    const now = this.clock.mono();
    let r = this.path.fromTun(packet, now);
    if (r.kind === "no-peer" && this.lingering.size > 0) {
      r = this.lingerPath.fromTun(packet, now);
      if (r.kind === "closed") {
        const l = this.lingering.get(r.peer.tidKey);
        if (l) this.endLinger(l);
        return this.drops.count("tun-session-closed");
      }
    }
    if (r.kind === "no-peer") return this.drops.count("tun-no-peer");
    if (r.kind === "closed") {
      this.removePeer(r.peer, "its session can send no more");
      return this.drops.count("tun-session-closed");
    }
  }

  /** Once a second: expire dead sessions, old cookie keys and replay entries. */
  tick(randomness: Uint8Array): void {
    const now = this.clock.mono();
    const up = this.upLines.summary();
    if (up.total > 0) this.log.info(`${up.total} more tunnels up (not logged one by one)`);
    const closed = this.closedLines.summary();
    if (closed.total > 0) {
      this.log.info(
        `${closed.total} more tunnels closed (not logged one by one): ${closed.byReason}`,
      );
    }
    for (const peer of [...this.peers.all()]) {
      if (!peer.session.alive(now)) this.removePeer(peer, "receive keys expired");
    }
    for (const l of [...this.lingering.values()]) {
      if (l.until > now) break; // oldest first
      this.endLinger(l);
    }
    for (const o of [...this.resumed.values()]) {
      if (o.until > now) break;
      this.endResumed(o);
    }
    this.cookies.update(this.clock.wall(), randomness);
    this.replay.prune(now);
    this.ephemeral.expire(this.clock.wall());
  }

  /** Erases every key (on shutdown). */
  close(): void {
    for (const peer of [...this.peers.all()]) {
      this.peers.remove(peer);
      peer.session.close();
    }
    for (const l of [...this.lingering.values()]) this.endLinger(l);
    for (const o of [...this.resumed.values()]) this.endResumed(o);
    this.cookies.clear();
    this.ephemeral.clear();
  }
}
