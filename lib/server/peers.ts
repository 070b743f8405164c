// The server's live tunnels, found by tunnel id (packets from the network) and by internal
// address (packets from the TUN device).

import type { TunnelSession } from "../core/session.ts";

export interface Peer {
  session: TunnelSession;
  tidKey: string;
  /** The client's address inside the server's TUN subnet. */
  internal: number;
  /** Where the client's datagrams come from (updated as it roams). */
  host: number;
  port: number;
  created: number;
  lastSeen: number;
  rxPackets: number;
  txPackets: number;
  rxBytes: number;
  txBytes: number;
}

export class PeerTable {
  private readonly byTid = new Map<string, Peer>();
  private readonly byInternal = new Map<number, Peer>();

  get size(): number {
    return this.byTid.size;
  }

  add(peer: Peer): void {
    this.byTid.set(peer.tidKey, peer);
    this.byInternal.set(peer.internal, peer);
  }

  byTunnelId(key: string): Peer | undefined {
    return this.byTid.get(key);
  }

  byAddress(internal: number): Peer | undefined {
    return this.byInternal.get(internal);
  }

  remove(peer: Peer): void {
    if (this.byTid.get(peer.tidKey) === peer) this.byTid.delete(peer.tidKey);
    if (this.byInternal.get(peer.internal) === peer) this.byInternal.delete(peer.internal);
  }

  /** The peer idle the longest (a linear scan: only needed when the table is full). */
  leastRecentlyUsed(): Peer | undefined {
    let lru: Peer | undefined;
    for (const p of this.byTid.values()) if (!lru || p.lastSeen < lru.lastSeen) lru = p;
    return lru;
  }

  all(): IterableIterator<Peer> {
    return this.byTid.values();
  }
}
