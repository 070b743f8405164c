// DataPath's lookup of the peer a datagram belongs to: it remembers the latest one, and that
// memory must never outlive a change to the peer table (a session replaced under the same id).

import assert from "node:assert/strict";
import { DataPath, newPeer } from "../lib/core/data_path.ts";
import { TunnelSession } from "../lib/core/session.ts";
import { DropCounters } from "../lib/core/log.ts";

const HOST = 0xc6120001;

/** A sealed IPv4/UDP packet to `session`'s peer. */
function datagram(sender: TunnelSession, now: number): Uint8Array {
  const p = new Uint8Array(28);
  p[0] = 0x45;
  p[3] = 28;
  p[8] = 64;
  p[9] = 17;
  return sender.sealPacket(p, now);
}

function pair(tid: Uint8Array) {
  const a = crypto.getRandomValues(new Uint8Array(32));
  const b = crypto.getRandomValues(new Uint8Array(32));
  return {
    mine: TunnelSession.create(tid, a.slice(), b.slice(), 0),
    theirs: TunnelSession.create(tid, b.slice(), a.slice(), 0),
  };
}

Deno.test("datagrams reach the peer of their tunnel id, also after the peer is replaced", () => {
  const delivered: Uint8Array[] = [];
  const path = new DataPath(
    { sendUdp: () => true, writeTun: (p) => void delivered.push(p.slice()) },
    new DropCounters(),
    { deliverTo: 0x0a000001, roaming: false },
  );
  const tidA = crypto.getRandomValues(new Uint8Array(32));
  const tidB = tidA.slice();
  tidB[3] ^= 1; // within the 8 bytes the lookup compares
  const a = pair(tidA);
  const b = pair(tidB);
  const peerA = newPeer(a.mine, 0x0a000002, HOST, 1, 0);
  const peerB = newPeer(b.mine, 0x0a000003, HOST, 2, 0);
  path.peers.add(peerA);
  path.peers.add(peerB);
  for (const [s, peer] of [[a, peerA], [b, peerB], [a, peerA], [a, peerA], [b, peerB]] as const) {
    const r = path.fromNetwork(datagram(s.theirs, 1), HOST, 1, 1);
    assert.equal(r.kind, "delivered");
    assert.equal(r.kind === "delivered" && r.peer, peer);
  }
  // A's session is replaced by a new one under the same id (a resume): the new one gets it.
  path.peers.remove(peerA);
  const a2 = pair(tidA);
  const peerA2 = newPeer(a2.mine, 0x0a000004, HOST, 1, 1);
  path.peers.add(peerA2);
  const r = path.fromNetwork(datagram(a2.theirs, 2), HOST, 1, 2);
  assert.equal(r.kind === "delivered" && r.peer, peerA2);
  // Gone altogether: unknown, whatever was looked up last.
  path.peers.remove(peerA2);
  assert.equal(path.fromNetwork(datagram(a2.theirs, 2), HOST, 1, 2).kind, "unknown-tid");
  assert.equal(delivered.length, 6);
});

Deno.test("tunnel ids that share their number in the peer table's index are each found, until removed", () => {
  const path = new DataPath(
    { sendUdp: () => true, writeTun: () => true },
    new DropCounters(),
    { deliverTo: 0x0a000001, roaming: false },
  );
  // The index takes 30 bits of the first 4 bytes: these three ids differ only in the last 2
  // bits of byte 3, or after it, so all share one number.
  const tid = crypto.getRandomValues(new Uint8Array(32));
  tid[3] &= 0xfc;
  const tids = [tid, tid.slice(), tid.slice()];
  tids[1][3] |= 1;
  tids[2][7] ^= 0x80;
  const pairs = tids.map(pair);
  const peers = pairs.map((p, i) => newPeer(p.mine, 0x0a000002 + i, HOST, 1 + i, 0));
  for (const peer of peers) path.peers.add(peer);
  const lookup = (i: number) => {
    const r = path.fromNetwork(datagram(pairs[i].theirs, 1), HOST, 1 + i, 1);
    return r.kind === "delivered" ? r.peer : r.kind;
  };
  for (const i of [0, 1, 2, 1, 0]) assert.equal(lookup(i), peers[i]);
  // An id of another number is unknown while clashes are indexed.
  const other = tid.slice();
  other[0] ^= 0x40;
  const stranger = pair(other);
  assert.equal(path.fromNetwork(datagram(stranger.theirs, 1), HOST, 9, 1).kind, "unknown-tid");
  // The one indexed by the number goes first: a clash takes its place, the other stays found.
  path.peers.remove(peers[0]);
  assert.equal(lookup(0), "unknown-tid");
  assert.equal(lookup(1), peers[1]);
  assert.equal(lookup(2), peers[2]);
  path.peers.remove(peers[2]);
  assert.equal(lookup(2), "unknown-tid");
  assert.equal(lookup(1), peers[1]);
  path.peers.remove(peers[1]);
  assert.equal(lookup(1), "unknown-tid");
  assert.equal(path.peers.size, 0);
});

Deno.test("the least recently seen peer is found in constant time, in the order packets arrived", () => {
  const io = { sendUdp: () => true, writeTun: () => true };
  const path = new DataPath(io, new DropCounters(), { deliverTo: 0x0a000001, roaming: true });
  const tid = (i: number) => {
    const t = new Uint8Array(32);
    new DataView(t.buffer).setUint32(0, 0x9e3779b1 * (i + 1) >>> 0);
    t[31] = i & 255;
    return t;
  };
  const sessions = [0, 1, 2].map((i) => pair(tid(i)));
  const peers = sessions.map((s, i) => newPeer(s.mine, 0x0a000002 + i, HOST, 1 + i, 0));
  for (const p of peers) path.peers.add(p);
  assert.equal(path.peers.leastRecentlyUsed(), peers[0]);
  // A packet from the first peer puts it at the recent end, then one from the second.
  assert.equal(path.fromNetwork(datagram(sessions[0].theirs, 2), HOST, 1, 2).kind, "delivered");
  assert.equal(path.peers.leastRecentlyUsed(), peers[1]);
  path.fromNetwork(datagram(sessions[1].theirs, 2.5), HOST, 2, 2.5);
  assert.equal(path.peers.leastRecentlyUsed(), peers[2]);
  // The newest peer's packets move nothing: a packet costs a comparison, not a map update.
  const listed = peers[1].listedSeq;
  path.fromNetwork(datagram(sessions[1].theirs, 2.6), HOST, 2, 2.6);
  assert.equal(peers[1].listedSeq, listed);
  path.peers.remove(peers[2]);
  assert.equal(path.peers.leastRecentlyUsed(), peers[0]);
  // A peer replaced under the same tunnel id takes the recent end, not its predecessor's place.
  const again = newPeer(sessions[0].mine, 0x0a000009, HOST, 1, 3);
  path.peers.add(again);
  assert.equal(path.peers.leastRecentlyUsed(), peers[1]);
});

Deno.test("a busy peer is never evicted from a full table, however fast new peers come in", () => {
  // The server's path under a flood of valid handshakes: a 256-peer table, each new peer
  // evicting the least recently seen; the busy peer sends one packet per 10 new peers.
  const io = { sendUdp: () => true, writeTun: () => true };
  const path = new DataPath(io, new DropCounters(), { deliverTo: 0x0a000001, roaming: true });
  const busy = pair(new Uint8Array(32).fill(7));
  const busyPeer = newPeer(busy.mine, 0x0a000002, HOST, 1, 0);
  path.peers.add(busyPeer);
  const a = new Uint8Array(32).fill(1);
  const shared = TunnelSession.create(new Uint8Array(32), a.slice(), a.slice(), 0);
  let evictedBusy = 0;
  for (let i = 0; i < 3000; i++) {
    if (path.peers.size >= 256) {
      const lru = path.peers.leastRecentlyUsed()!;
      if (lru === busyPeer) evictedBusy++;
      path.peers.remove(lru);
      if (lru === busyPeer) path.peers.add(busyPeer);
    }
    const p = newPeer(shared, 0x0b000000 + i, HOST, 2, 0);
    const key = new Uint8Array(32);
    new DataView(key.buffer).setUint32(0, i + 1);
    p.tidKey = String.fromCharCode(...key);
    path.peers.add(p);
    if (i % 10 === 0) {
      const r = path.fromNetwork(datagram(busy.theirs, 1), HOST, 1, 1);
      assert.equal(r.kind, "delivered");
    }
  }
  assert.equal(evictedBusy, 0);
});

Deno.test("a flood of one-shot peers evicts its own, not a settled peer that paused, and settled peers stay at most 3/4 of the table", () => {
  const io = { sendUdp: () => true, writeTun: () => true };
  const path = new DataPath(io, new DropCounters(), { deliverTo: 0x0a000001, roaming: true });
  const busy = pair(new Uint8Array(32).fill(9));
  const busyPeer = newPeer(busy.mine, 0x0a000002, HOST, 1, 0);
  path.peers.add(busyPeer);
  const a = new Uint8Array(32).fill(1);
  const shared = TunnelSession.create(new Uint8Array(32), a.slice(), a.slice(), 0);
  let next = 0;
  const oneShot = () => {
    if (path.peers.size >= 256) path.peers.remove(path.peers.leastRecentlyUsed()!);
    const p = newPeer(shared, 0x0b000000 + next, HOST, 2, 0);
    const key = new Uint8Array(32);
    new DataView(key.buffer).setUint32(0, ++next);
    p.tidKey = String.fromCharCode(...key);
    path.peers.add(p);
    return p;
  };
  const send = () => path.fromNetwork(datagram(busy.theirs, 1), HOST, 1, 1).kind;
  // Busy for a while among other tunnels: it settles.
  for (let i = 0; i < 40; i++) {
    oneShot();
    assert.equal(send(), "delivered");
  }
  assert.equal(busyPeer.settled, true);
  // Then silent while 3000 one-shot tunnels arrive, 12 tables' worth: it is still there.
  for (let i = 0; i < 3000; i++) oneShot();
  assert.equal(path.peers.byTunnelId(busyPeer.tidKey), busyPeer);
  assert.equal(send(), "delivered");
  // Tunnels that all keep sending cannot hold more than 3/4 of the table as settled: the rest
  // is young, and eviction still finds a peer.
  const chatty = Array.from({ length: 256 }, () => oneShot());
  for (let round = 0; round < 40; round++) {
    for (const p of chatty) {
      p.rxPackets++;
      if (path.peers.isAging(p)) path.peers.touch(p);
    }
    oneShot();
  }
  const settled = [...path.peers.all()].filter((p) => p.settled).length;
  assert.ok(settled * 4 <= path.peers.size * 3, `${settled} of ${path.peers.size} settled`);
  assert.ok(path.peers.leastRecentlyUsed() !== undefined);
});

Deno.test("a full peer table evicts at the rate handshakes come in, however large it is", () => {
  // 65 536 peers, then 20 000 evictions each followed by an add: the server's path when a flood
  // of valid handshakes meets a full table. A scan per eviction took ~1.3 billion visits here.
  const io = { sendUdp: () => true, writeTun: () => true };
  const path = new DataPath(io, new DropCounters(), { deliverTo: 0x0a000001, roaming: true });
  const a = new Uint8Array(32).fill(1);
  const shared = TunnelSession.create(new Uint8Array(32), a.slice(), a.slice(), 0);
  const peer = (i: number) => {
    const p = newPeer(shared, i, HOST, 1, i / 1e6);
    const key = new Uint8Array(32);
    new DataView(key.buffer).setUint32(0, i);
    p.tidKey = String.fromCharCode(...key); // distinct keys; the session is only carried along
    return p;
  };
  for (let i = 0; i < 65_536; i++) path.peers.add(peer(i));
  const t0 = performance.now();
  for (let i = 0; i < 20_000; i++) {
    const lru = path.peers.leastRecentlyUsed()!;
    assert.equal(lru.internal, i, "not the oldest");
    path.peers.remove(lru);
    path.peers.add(peer(65_536 + i));
  }
  const ms = performance.now() - t0;
  console.log(`20 000 evictions from a table of 65 536: ${ms.toFixed(0)} ms`);
  assert.equal(path.peers.size, 65_536);
  assert.ok(ms < 2000, `${ms} ms`);
});
