// The server's packet logic, between the network and the TUN device. It owns the sessions, the
// handshake responder and the cookie logic; IO and slow crypto come in through interfaces, so
// the same code runs in the daemon and in tests. Nothing here throws on bad input: every drop
// is counted under a reason.

import { COOKIE_BYTES, MSG_INITIATION, MSG_TUNNEL } from "../core/constants.ts";
import { parseInitiation, respondFinish, respondOpen } from "../core/handshake.ts";
import { tidKeyAt, TunnelSession } from "../core/session.ts";
import { DataPath, newPeer, type Peer, type PeerTable, type TunnelIo } from "../core/data_path.ts";
import {
  buildCookie,
  type CookieKeyring,
  cookieTimestamp,
  isCookie,
  openCookie,
} from "../core/cookie.ts";
import { ReplayCache } from "../core/replay.ts";
import type { EphemeralKeyStore } from "../core/ephemeral.ts";
import { AddressPool } from "../core/addresses.ts";
import { numberToIpv4 } from "../core/ip.ts";
import { DropCounters, type Logger } from "../core/log.ts";
import { hex, wipe } from "../core/bytes.ts";

/** The server's wires are the tunnel's: the packet loop implements them. */
export type ServerIo = TunnelIo;

/** The slow parts of a handshake, run off the packet path (a worker). */
export interface ResponderCrypto {
  mcelieceDecap(c0: Uint8Array): Promise<Uint8Array>;
  sntrupDecap(ct: Uint8Array, sk: Uint8Array): Promise<Uint8Array>;
}

export interface ServerConfig {
  x25519Sk: Uint8Array;
  /** The TUN device's own address; clients get the others of its subnet. */
  tunAddress: number;
  prefix: number;
  /** Where decrypted packets are addressed (-H); default the TUN address. */
  hostAddress: number;
  maxPeers: number;
  /** Handshakes waiting for decapsulation at once; more are dropped. */
  maxPendingHandshakes: number;
}

/** Packets for a tunnel id whose handshake is still being processed (0-RTT data). */
const HELD_PACKETS_MAX = 256;
const HELD_SECONDS = 2;

export class ServerDevice {
  readonly drops = new DropCounters();
  private readonly path: DataPath;
  readonly replay = new ReplayCache();
  private readonly pool: AddressPool;
  private pending = 0;
  private held: { key: string; data: Uint8Array; host: number; port: number; until: number }[] = [];
  handshakes = 0;

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
    this.path = new DataPath(io, this.drops, { deliverTo: config.hostAddress, roaming: true });
  }

  get peers(): PeerTable {
    return this.path.peers;
  }

  /** One datagram from the crypto port. */
  onDatagram(data: Uint8Array, host: number, port: number): void {
    if (data.length < 2) return this.drops.count("short");
    const type = (data[0] << 8) | data[1];
    if (type === MSG_TUNNEL) return this.onTunnelPacket(data, host, port);
    if (type === MSG_INITIATION) {
      this.onInitiation(data, host, port).catch((e) => {
        // e.g. a McEliece ciphertext with padding bits set: the KEM refuses it
        this.drops.count("handshake-rejected");
        this.log.debug(`handshake from ${numberToIpv4(host)}:${port} rejected: ${e}`);
      });
      return;
    }
    if (isCookie(data)) return this.onCookie(data, host, port);
    this.drops.count("unknown-type");
  }

  private onTunnelPacket(data: Uint8Array, host: number, port: number): void {
    const r = this.path.fromNetwork(data, host, port, this.clock.mono());
    if (r.kind === "unknown-tid") return this.hold(r.tidKey, data, host, port);
    if (r.kind === "cookie") return this.drops.count("cookie-from-client");
    if (r.kind === "dropped" && r.reason === "tunnel-expired" && r.peer) {
      this.removePeer(r.peer, "expired");
    }
  }

  /** Keeps early 0-RTT packets of a tunnel whose handshake is still being decapsulated. */
  private hold(key: string, data: Uint8Array, host: number, port: number): void {
    if (this.pending === 0) return this.drops.count("tunnel-unknown-tid");
    const now = this.clock.mono();
    const kept = this.held.filter((h) => h.until > now);
    for (let i = kept.length; i < this.held.length; i++) this.drops.count("tunnel-held-expired");
    this.held = kept;
    if (this.held.length >= HELD_PACKETS_MAX) return this.drops.count("tunnel-held-overflow");
    this.held.push({ key, data: data.slice(), host, port, until: now + HELD_SECONDS });
  }

  private releaseHeld(key: string): void {
    const mine = this.held.filter((h) => h.key === key);
    if (mine.length === 0) return;
    this.held = this.held.filter((h) => h.key !== key);
    for (const h of mine) this.onTunnelPacket(h.data, h.host, h.port);
  }

  private async onInitiation(data: Uint8Array, host: number, port: number): Promise<void> {
    const msg = parseInitiation(data);
    if (!msg) return this.drops.count("handshake-malformed");
    const started = this.clock.mono();
    if (this.replay.has(msg.c0, started)) return this.drops.count("handshake-replay");
    if (this.pending >= this.config.maxPendingHandshakes) {
      return this.drops.count("handshake-busy");
    }
    const copy = parseInitiation(data.slice())!; // the receive buffer is reused
    this.pending++;
    let mcelieceSs: Uint8Array | null = null;
    let sntrupSs: Uint8Array | null = null;
    try {
      mcelieceSs = await this.crypto.mcelieceDecap(copy.c0);
      const live = this.ephemeral.live(this.clock.wall());
      const opened = respondOpen(
        copy,
        mcelieceSs,
        this.config.x25519Sk,
        live.map((k) => ({ x25519Sk: k.x25519Sk, id: k.slot })),
      );
      if (!opened) return this.drops.count("handshake-auth");
      const slot = this.ephemeral.get(opened.slotId);
      if (!slot) return this.drops.count("handshake-slot-expired");
      sntrupSs = await this.crypto.sntrupDecap(opened.sntrupCt, slot.sntrupSk);
      const result = respondFinish(copy, opened, sntrupSs);
      const now = this.clock.mono();
      if (this.replay.has(copy.c0, now)) return this.drops.count("handshake-replay");
      this.replay.add(copy.c0, now);
      // The responder sends with the responder-to-initiator root.
      const session = TunnelSession.create(result.tid, result.r2i, result.i2r, now);
      this.addSession(session, tidKeyAt(result.tid, 0), host, port, now);
      this.handshakes++;
      this.log.info(
        `tunnel ${hex(result.tid).slice(0, 12)} up with ${numberToIpv4(host)}:${port} ` +
          `(${((now - started) * 1000).toFixed(0)} ms)`,
      );
      this.releaseHeld(tidKeyAt(result.tid, 0));
    } finally {
      this.pending--;
      wipe(mcelieceSs, sntrupSs);
    }
  }

  /**
   * A returning cookie, alone or in front of a tunnel packet: rebuild the session it holds at
   * the next epoch, then handle the packet.
   */
  private onCookie(data: Uint8Array, host: number, port: number): void {
    if (data.length < COOKIE_BYTES) return this.drops.count("cookie-short");
    const cookie = data.subarray(0, COOKIE_BYTES);
    const ts = cookieTimestamp(cookie);
    const key = ts === null ? null : this.cookies.keyFor(ts);
    const contents = key ? openCookie(key, cookie) : null;
    if (!contents) return this.drops.count("cookie-invalid");
    const tidKey = tidKeyAt(contents.tid, 0);
    const now = this.clock.mono();
    if (!this.peers.byTunnelId(tidKey)) {
      if (this.replay.has(cookie, now)) return this.drops.count("cookie-replay");
      this.replay.add(cookie, now);
      const session = TunnelSession.fromCookie(
        contents.tid,
        contents.epoch,
        contents.sendRoot,
        contents.recvRoot,
        now,
      );
      this.addSession(session, tidKey, host, port, now);
      this.log.info(`tunnel ${hex(contents.tid).slice(0, 12)} resumed from a cookie`);
    }
    wipe(contents.sendRoot, contents.recvRoot);
    if (data.length > COOKIE_BYTES) this.onDatagram(data.subarray(COOKIE_BYTES), host, port);
  }

  private addSession(
    session: TunnelSession,
    tidKey: string,
    host: number,
    port: number,
    now: number,
  ): void {
    const old = this.peers.byTunnelId(tidKey);
    if (old) this.removePeer(old, "replaced");
    if (this.peers.size >= this.config.maxPeers) this.evictWithCookie();
    let internal = this.pool.allocate();
    if (internal === null) {
      this.evictWithCookie();
      internal = this.pool.allocate();
    }
    if (internal === null) {
      session.close();
      this.drops.count("no-address");
      return;
    }
    this.peers.add(newPeer(session, internal, host, port, now));
  }

  /** Frees room: the least recently used client gets its state back as a cookie. */
  private evictWithCookie(): void {
    const lru = this.peers.leastRecentlyUsed();
    if (!lru) return;
    const issued = this.cookies.issue(this.clock.wall());
    const state = lru.session.cookieState();
    if (issued && state) {
      const cookie = buildCookie(issued.key, issued.nonce, issued.timestamp, {
        tid: lru.session.tid,
        ...state,
      });
      try {
        this.io.sendUdp(lru.session.seal(cookie, this.clock.mono()), lru.host, lru.port);
      } catch { /* a send error only costs the client a new handshake */ }
      wipe(state.sendRoot, state.recvRoot);
    }
    this.removePeer(lru, "evicted with a cookie");
  }

  removePeer(peer: Peer, why: string): void {
    this.peers.remove(peer);
    this.pool.release(peer.internal);
    peer.session.close();
    this.log.info(
      `tunnel ${hex(peer.session.tid).slice(0, 12)} (${
        numberToIpv4(peer.internal)
      }) closed: ${why}`,
    );
  }

  /** One packet read from the TUN device: into the tunnel of the client it is addressed to. */
  onTunPacket(packet: Uint8Array): void {
    const r = this.path.fromTun(packet, this.clock.mono());
    if (r.kind === "no-peer") return this.drops.count("tun-no-peer");
    if (r.kind === "closed") {
      this.removePeer(r.peer, "its session can send no more");
      return this.drops.count("tun-session-closed");
    }
  }

  /** Once a second: expire dead sessions, old cookie keys and replay entries. */
  tick(randomness: Uint8Array): void {
    const now = this.clock.mono();
    for (const peer of [...this.peers.all()]) {
      if (!peer.session.alive(now)) this.removePeer(peer, "receive keys expired");
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
    this.cookies.clear();
    this.ephemeral.clear();
    wipe(this.config.x25519Sk);
  }
}
