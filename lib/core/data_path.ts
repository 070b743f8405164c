// The tunnel data path, one module for both devices: the live tunnels (peers), found by tunnel id
// (datagrams from the network) and by internal address (packets from the TUN device), and the
// steps of one packet each way — seal or open, translate the addresses, count. IO goes out
// through TunnelIo, which the packet loop implements. What a device decides by itself (an
// unknown tunnel id, a session that can no longer send, a cookie inside the tunnel) comes back
// to it as a result; every other drop is counted here.

import { COOKIE_BYTES, TUNNEL_OVERHEAD } from "./constants.ts";
import { tidKeyAt, type TunnelSession } from "./session.ts";
import { isCookie } from "./cookie.ts";
import { ipv4Dst, ipv4HeaderLength } from "./ip.ts";
import { translate, translateOffloaded } from "./nat.ts";
import { concat } from "./bytes.ts";
import type { DropCounters } from "./log.ts";

/** The two wires of a tunnel endpoint. */
export interface TunnelIo {
  /** Sends (or queues) one datagram; false when it was refused at once. */
  sendUdp(data: Uint8Array, host: number, port: number): boolean | void;
  /**
   * Writes one packet to the TUN device; false when it was refused. `partialChecksum`: its TCP
   * checksum field holds only the pseudo-header sum, for the device to finish (only given when
   * `finishesChecksums` is true).
   */
  writeTun(packet: Uint8Array, partialChecksum?: boolean): boolean | void;
  /** The TUN device finishes TCP checksums (virtio_net_hdr offloads): see translateOffloaded. */
  readonly finishesChecksums?: boolean;
  /** Optional: a buffer to seal the next datagram into; sendUdp then takes it without a copy. */
  udpBuffer?(): Uint8Array | undefined;
}

/** One live tunnel: the session and where its packets go on either side. */
export interface Peer {
  session: TunnelSession;
  tidKey: string;
  /** The address that stands for the peer on our TUN side. */
  internal: number;
  /** Where the peer's datagrams go (and, with roaming, where they last came from). */
  host: number;
  port: number;
  created: number;
  /** When an authenticated datagram last arrived. */
  lastSeen: number;
  /** The peer table's insertion count when it last moved this peer to the recent end. */
  listedSeq: number;
  /** In the peer table's settled part (see PeerTable.settled). */
  settled: boolean;
  /** Its neighbours in the peer table's recency list (see RecencyList); null at either end. */
  olderPeer: Peer | null;
  newerPeer: Peer | null;
  lastSent: number;
  /** Datagrams sent since the last authenticated one arrived: a silent peer shows here. */
  unanswered: number;
  rxPackets: number;
  txPackets: number;
  rxBytes: number;
  txBytes: number;
  /**
   * A cookie the server handed back: it goes in front of each datagram until a packet of the
   * rebuilt session (epoch `cookieEpoch` or later) proves the server has it, at most
   * MAX_COOKIE_SENDS times (a lost datagram would otherwise cost the tunnel).
   */
  cookie?: Uint8Array;
  cookieEpoch?: number;
  cookieSends?: number;
  /** The last cookie received, so that the same one sent again is not adopted twice. */
  lastCookie?: Uint8Array;
}

/** Datagrams a cookie rides on at most, waiting for the server's proof it was received. */
export const MAX_COOKIE_SENDS = 16;

/** A new peer's record, its counters at zero. */
export function newPeer(
  session: TunnelSession,
  internal: number,
  host: number,
  port: number,
  now: number,
): Peer {
  return {
    session,
    tidKey: tidKeyAt(session.tid, 0),
    internal,
    host,
    port,
    created: now,
    lastSeen: now,
    listedSeq: 0,
    settled: false,
    olderPeer: null,
    newerPeer: null,
    lastSent: 0,
    unanswered: 0,
    rxPackets: 0,
    txPackets: 0,
    rxBytes: 0,
    txBytes: 0,
  };
}

/** Whether the tunnel id in `data` (at 2) starts as `peer`'s: the bytes its map key is made of. */
function tidPrefixIs(data: Uint8Array, peer: Peer): boolean {
  const tid = peer.session.tid;
  for (let i = 0; i < 8; i++) if (data[2 + i] !== tid[i]) return false;
  return true;
}

/**
 * 30 bits of the tunnel id at `offset` as a number: a small-integer map key, so finding a
 * datagram's tunnel builds no string (under a flood most datagrams name no live tunnel).
 */
function tidNumberAt(bytes: Uint8Array, offset: number): number {
  return (bytes[offset] << 22) | (bytes[offset + 1] << 14) | (bytes[offset + 2] << 6) |
    (bytes[offset + 3] >> 2);
}

/**
 * Peers, least recently listed first, linked through the peers themselves: every operation is
 * constant time. A Map used as a queue is not: V8 leaves a deleted entry's slot in place until
 * the table is rebuilt, and `values().next()` walks past every one of them, so with a full table
 * (every handshake evicting the oldest, and live peers moving to the end) finding the oldest cost
 * ~25 µs, 9 % of the packet thread at 5x the handshake capacity (issue 8).
 */
class RecencyList {
  oldest: Peer | null = null;
  private newest: Peer | null = null;
  size = 0;

  /** `peer` (in no list) becomes the newest. */
  push(peer: Peer): void {
    peer.olderPeer = this.newest;
    peer.newerPeer = null;
    if (this.newest === null) this.oldest = peer;
    else this.newest.newerPeer = peer;
    this.newest = peer;
    this.size++;
  }

  /** Takes `peer`, which is in this list, out of it. */
  unlink(peer: Peer): void {
    if (peer.olderPeer === null) this.oldest = peer.newerPeer;
    else peer.olderPeer.newerPeer = peer.newerPeer;
    if (peer.newerPeer === null) this.newest = peer.olderPeer;
    else peer.newerPeer.olderPeer = peer.olderPeer;
    peer.olderPeer = peer.newerPeer = null;
    this.size--;
  }
}

/** Authenticated packets after which a tunnel counts as settled, not one-shot. */
const SETTLE_PACKETS = 16;

/**
 * The live tunnels by tunnel id and by internal address, and which one a full table gives up.
 *
 * That order is two recency lists, least recently seen first: new tunnels go to `young`, and one
 * that keeps sending moves to `settled`, at most 3/4 of the table. Eviction takes the front of
 * `young` while it has any. Anyone can make valid handshakes, so a flood of one-shot tunnels
 * then evicts its own, not the tunnels of users who were busy before it and paused a moment (at
 * 1000 handshakes/s a 256-peer table turns over in 0.26 s; a TCP flow can pause that long).
 * A peer that sends goes back to the recent end of its list once a quarter of the table was
 * inserted after it (see isAging): a packet costs one comparison, not a map update.
 */
export class PeerTable {
  private readonly byTid = new Map<string, Peer>();
  private readonly young = new RecencyList();
  private readonly settled = new RecencyList();
  /** Insertions into either list so far (adds and moves to the end). */
  private seq = 0;
  private readonly byInternal = new Map<number, Peer>();
  /**
   * The datagram path's index: by tidNumberAt, one peer per number; a peer whose number is
   * taken by another (~1 in 16 000 at 65 536 peers) is found in `clashes` by its tidKey.
   */
  private readonly byNumber = new Map<number, Peer>();
  private readonly clashes = new Map<string, Peer>();
  /** Moves on with every add and remove: tells a cached lookup it may be stale. */
  generation = 0;

  get size(): number {
    return this.byTid.size;
  }

  add(peer: Peer): void {
    this.generation++;
    const old = this.byTid.get(peer.tidKey);
    if (old !== undefined) {
      this.unindex(old);
      this.unlist(old);
    }
    this.byTid.set(peer.tidKey, peer);
    peer.settled = false;
    this.young.push(peer);
    peer.listedSeq = ++this.seq;
    this.byInternal.set(peer.internal, peer);
    const n = tidNumberAt(peer.session.tid, 0);
    if (this.byNumber.has(n)) this.clashes.set(peer.tidKey, peer);
    else this.byNumber.set(n, peer);
  }

  byTunnelId(key: string): Peer | undefined {
    return this.byTid.get(key);
  }

  /** The peer whose tunnel id starts as the one in the tunnel packet `data` (at 2). */
  byTunnelIdIn(data: Uint8Array): Peer | undefined {
    const peer = this.byNumber.get(tidNumberAt(data, 2));
    // Every clash's number is in byNumber (unindex moves one up when its holder goes), so a
    // number nobody holds ends here: a flood of unknown ids builds no string, clashes or not.
    if (peer === undefined) return undefined;
    if (tidPrefixIs(data, peer)) return peer;
    return this.clashes.size === 0 ? undefined : this.clashes.get(tidKeyAt(data, 2));
  }

  byAddress(internal: number): Peer | undefined {
    return this.byInternal.get(internal);
  }

  remove(peer: Peer): void {
    this.generation++;
    if (this.byTid.get(peer.tidKey) === peer) {
      this.byTid.delete(peer.tidKey);
      this.unindex(peer);
      this.unlist(peer);
    }
    if (this.byInternal.get(peer.internal) === peer) this.byInternal.delete(peer.internal);
  }

  /** Takes `peer` out of the number index; a clash with its number takes its place. */
  private unindex(peer: Peer): void {
    if (this.clashes.get(peer.tidKey) === peer) {
      this.clashes.delete(peer.tidKey);
      return;
    }
    const n = tidNumberAt(peer.session.tid, 0);
    if (this.byNumber.get(n) !== peer) return;
    this.byNumber.delete(n);
    for (const [key, other] of this.clashes) {
      if (tidNumberAt(other.session.tid, 0) !== n) continue;
      this.clashes.delete(key);
      this.byNumber.set(n, other);
      return;
    }
  }

  private unlist(peer: Peer): void {
    (peer.settled ? this.settled : this.young).unlink(peer);
  }

  /** More than a quarter of the table was inserted after `peer`: it is drifting to the front. */
  isAging(peer: Peer): boolean {
    return (this.seq - peer.listedSeq) * 4 > this.byTid.size;
  }

  /**
   * `peer` was seen: it moves to the recent end of its list, or of the settled one once it has
   * sent SETTLE_PACKETS. A settled list past 3/4 of the table hands its front back to `young`.
   */
  touch(peer: Peer): void {
    if (this.byTid.get(peer.tidKey) !== peer) return;
    this.unlist(peer);
    if (!peer.settled && peer.rxPackets >= SETTLE_PACKETS) peer.settled = true;
    (peer.settled ? this.settled : this.young).push(peer);
    peer.listedSeq = ++this.seq;
    if (this.settled.size * 4 > this.byTid.size * 3) {
      const oldest = this.settled.oldest!;
      this.settled.unlink(oldest);
      oldest.settled = false;
      this.young.push(oldest);
      oldest.listedSeq = ++this.seq;
    }
  }

  /**
   * The peer a full table gives up: the young one seen the longest ago, else the settled one.
   * Constant time. It was a scan of the whole table: with the table full, every new handshake
   * then cost ~65 000 visits, and a flood of valid handshakes held the packet thread at 100 %.
   */
  leastRecentlyUsed(): Peer | undefined {
    return this.young.oldest ?? this.settled.oldest ?? undefined;
  }

  all(): IterableIterator<Peer> {
    return this.byTid.values();
  }
}

/** What became of a packet from the TUN device. */
export type FromTun =
  | { kind: "sent"; peer: Peer }
  /** Not IPv4 (counted). */
  | { kind: "dropped" }
  /** No live tunnel for its destination. */
  | { kind: "no-peer"; destination: number }
  /** The peer's session can no longer send: its receive keys expired or its send keys ran out. */
  | { kind: "closed"; peer: Peer; destination: number };

/** What became of a tunnel datagram from the network. */
export type FromNetwork =
  | { kind: "delivered"; peer: Peer }
  /** An authenticated cookie inside the tunnel (a view of the receive buffer). */
  | { kind: "cookie"; peer: Peer; cookie: Uint8Array }
  /**
   * No live tunnel has this id (not counted: the device may hold the datagram; its tidKey is
   * tidKeyAt(data, 2), made only if wanted).
   */
  | { kind: "unknown-tid" }
  /** Refused (counted); `peer` when it was the peer's session that refused it. */
  | { kind: "dropped"; reason: string; peer?: Peer };

const UNKNOWN_TID: FromNetwork = { kind: "unknown-tid" };

export interface DataPathConfig {
  /** Where decrypted packets are addressed: the host (server) or the TUN address (client). */
  deliverTo: number;
  /** The peer's address follows its authenticated datagrams (a roaming client). */
  roaming: boolean;
}

export class DataPath {
  readonly peers = new PeerTable();

  /** The peer of the latest datagram (a burst is one tunnel's): most lookups end here. */
  private lastPeer: Peer | undefined;
  private lastGeneration = -1;

  constructor(
    private readonly io: TunnelIo,
    private readonly drops: DropCounters,
    private readonly config: DataPathConfig,
  ) {}

  /** One packet read from the TUN device: into the tunnel of the peer it is addressed to. */
  fromTun(packet: Uint8Array, now: number): FromTun {
    if (ipv4HeaderLength(packet) === 0) {
      this.drops.count("tun-not-ipv4");
      return { kind: "dropped" };
    }
    const destination = ipv4Dst(packet);
    const peer = this.peers.byAddress(destination);
    if (!peer) return { kind: "no-peer", destination };
    if (!this.send(peer, packet, now)) return { kind: "closed", peer, destination };
    return { kind: "sent", peer };
  }

  /** Seals `packet` into the peer's tunnel and sends it; false when the session cannot send. */
  send(peer: Peer, packet: Uint8Array, now: number): boolean {
    if (!peer.session.alive(now)) return false;
    let wire: Uint8Array;
    try {
      wire = peer.session.sealPacket(packet, now, this.io.udpBuffer?.());
    } catch {
      return false; // send keys exhausted
    }
    if (peer.cookie) {
      wire = concat(peer.cookie, wire);
      peer.cookieSends = (peer.cookieSends ?? 0) + 1;
      if (peer.cookieSends >= MAX_COOKIE_SENDS) peer.cookie = undefined;
    }
    if (this.io.sendUdp(wire, peer.host, peer.port) === false) this.drops.count("udp-send-failed");
    peer.lastSent = now;
    peer.unanswered++;
    peer.txPackets++;
    peer.txBytes += packet.length;
    return true;
  }

  /**
   * One tunnel datagram (type already checked) from host:port: opened where it lies (`data`
   * is a receive slot), translated and written to the TUN device.
   */
  fromNetwork(data: Uint8Array, host: number, port: number, now: number): FromNetwork {
    if (data.length < TUNNEL_OVERHEAD) return this.dropped("tunnel-short");
    let peer = this.lastPeer;
    if (this.lastGeneration !== this.peers.generation || !peer || !tidPrefixIs(data, peer)) {
      peer = this.peers.byTunnelIdIn(data);
      if (!peer) return UNKNOWN_TID;
      this.lastPeer = peer;
      this.lastGeneration = this.peers.generation;
    }
    const r = peer.session.openPacketInPlace(data, now);
    if (!r.ok) return this.dropped(`tunnel-${r.reason}`, peer);
    peer.lastSeen = now;
    if (this.peers.isAging(peer)) this.peers.touch(peer);
    peer.unanswered = 0;
    if (peer.cookie !== undefined && r.epoch >= peer.cookieEpoch!) peer.cookie = undefined;
    if (this.config.roaming) {
      peer.host = host;
      peer.port = port;
    }
    peer.rxPackets++;
    peer.rxBytes += r.plaintext.length;
    // An IPv4 packet starts with 0x4_, a cookie with "p": one byte tells the common case.
    if (r.plaintext[0] >> 4 !== 4 && isCookie(r.plaintext)) {
      return { kind: "cookie", peer, cookie: r.plaintext.subarray(0, COOKIE_BYTES) };
    }
    let partial = false;
    if (this.io.finishesChecksums === true) {
      const c = translateOffloaded(r.plaintext, peer.internal, this.config.deliverTo);
      if (c === null) return this.dropped("inner-not-ipv4", peer);
      partial = c === "partial";
    } else if (!translate(r.plaintext, peer.internal, this.config.deliverTo)) {
      return this.dropped("inner-not-ipv4", peer);
    }
    if (this.io.writeTun(r.plaintext, partial) === false) this.drops.count("tun-write-failed");
    return { kind: "delivered", peer };
  }

  private dropped(reason: string, peer?: Peer): FromNetwork {
    this.drops.count(reason);
    return { kind: "dropped", reason, peer };
  }
}
