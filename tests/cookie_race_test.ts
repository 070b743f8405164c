// Issue 10: nothing lost around a cookie. When the server evicts a tunnel it lets it linger,
// capped at the cookie's epoch, while the cookie travels: what the client sends meanwhile still
// arrives and replies still go out. The client puts the cookie in front of each datagram until
// the rebuilt session answers, so a lost datagram does not cost the tunnel; a server whose
// cookie was lost sends it again when the client keeps talking in the old epoch. Our server and
// clients in one process (tests/helpers/device_net.ts), real keys and KEMs, the test's clock.

import assert from "node:assert/strict";
import { TunnelSession } from "../lib/core/session.ts";
import { COOKIE_BYTES, EPOCH_SECONDS } from "../lib/core/constants.ts";
import { isCookie } from "../lib/core/cookie.ts";
import { MAX_COOKIE_SENDS } from "../lib/core/data_path.ts";
import { StderrLogger } from "../lib/runtime/log.ts";
import { peerLimits } from "../lib/server/device.ts";
import { Prng } from "./helpers/prng.ts";
import { DeviceNet, evictionTest, netTest, texts, through, until } from "./helpers/device_net.ts";

const clientPeer = (net: DeviceNet, i: number) => [...net.clients[i].device.servers][0]?.peer;
const hasCookie = (net: DeviceNet, i: number) => () => clientPeer(net, i)?.cookie !== undefined;
const serverPeer = (net: DeviceNet, i: number) =>
  [...net.server.peers.all()].find((p) => p.host === net.clients[i].host);
const lingering = (net: DeviceNet, i: number) =>
  [...net.server.lingeringPeers.all()].find((p) => p.host === net.clients[i].host);

/** Client 0 up, then client 1's tunnel evicts it (one peer allowed): its cookie is sent. */
async function evictClient0(net: DeviceNet): Promise<number> {
  assert.ok(await through(net, 0, "a1"));
  const internal = serverPeer(net, 0)!.internal;
  assert.ok(await through(net, 1, "b1"), "client 1 in, client 0 evicted with a cookie");
  assert.equal(serverPeer(net, 0), undefined);
  assert.ok(lingering(net, 0), "client 0's tunnel lingers");
  return internal;
}

evictionTest(
  "cookie race: sent while the cookie travels, a packet arrives and its reply gets back",
  3,
  async (net) => {
    net.pausedToClients = []; // the cookie is on its way and stays there for now
    const internal = await evictClient0(net);
    assert.ok(!hasCookie(net, 0)());
    // The client does not know yet: it sends in the old epoch, to a tunnel id the server
    // no longer has live. This was the soak's lost echo request (tunnel-unknown-tid).
    assert.ok(await through(net, 0, "a2"), "the packet sent across the cookie arrives");
    assert.equal(net.server.drops.get("tunnel-unknown-tid"), 0);
    assert.ok(net.serverSend(0, "reply a2"), "its reply goes out of the lingering tunnel");
    net.flushToClients();
    assert.ok(await until(() => texts(net.clients[0].tun).includes("reply a2")));
    assert.ok(await until(hasCookie(net, 0)));
    // the client's next packet brings the cookie back: same tunnel id, same address
    assert.ok(await through(net, 0, "a3"));
    assert.equal(net.server.resumes, 1);
    assert.equal(serverPeer(net, 0)?.internal, internal, "the resumed tunnel keeps its address");
    assert.equal(lingering(net, 0), undefined);
    assert.ok(lingering(net, 1), "client 1 was evicted in turn and lingers");
    assert.ok(net.serverSend(0, "reply a3"));
    assert.ok(await until(() => texts(net.clients[0].tun).includes("reply a3")));
  },
);

evictionTest(
  "cookie race: the datagram carrying the cookie is lost; the next one carries it again",
  4,
  async (net) => {
    await evictClient0(net);
    assert.ok(await until(hasCookie(net, 0)));
    net.loseFromClients = 1;
    net.clientSend(0, "a2 (lost with its cookie)");
    assert.equal(net.server.resumes, 0);
    assert.ok(await through(net, 0, "a3"), "the next packet, with the cookie again, resumes");
    assert.equal(net.server.resumes, 1);
    const sends = clientPeer(net, 0)!.cookieSends;
    assert.equal(sends, 2);
    // The server's first packet of the rebuilt session proves it: the cookie stops riding.
    assert.ok(net.serverSend(0, "reply"));
    assert.ok(await until(() => !hasCookie(net, 0)()));
    const before = net.captured.length;
    assert.ok(await through(net, 0, "a4"));
    assert.ok(net.captured.slice(before).every((d) => !isCookie(d)));
    assert.equal(net.server.drops.get("cookie-replay"), 0);
  },
);

evictionTest(
  "cookie race: without an answer, a cookie rides on at most MAX_COOKIE_SENDS datagrams",
  5,
  async (net) => {
    await evictClient0(net);
    assert.ok(await until(hasCookie(net, 0)));
    const before = net.captured.length;
    for (let k = 0; k < MAX_COOKIE_SENDS + 4; k++) assert.ok(await through(net, 0, `a${k}`));
    const carried = net.captured.slice(before).filter((d) =>
      isCookie(d) && d.length > COOKIE_BYTES
    );
    assert.equal(carried.length, MAX_COOKIE_SENDS);
    assert.equal(net.server.resumes, 1);
    // repeats of a redeemed cookie are refused; their packets are the live session's
    assert.equal(net.server.drops.get("cookie-replay"), MAX_COOKIE_SENDS - 1);
  },
);

evictionTest(
  "cookie race: the server's cookie is lost; the lingering tunnel sends it again",
  6,
  async (net) => {
    assert.ok(await through(net, 0, "a1"));
    net.loseToClients = 1; // the cookie
    assert.ok(await through(net, 1, "b1"));
    assert.ok(lingering(net, 0));
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(!hasCookie(net, 0)(), "the cookie was lost");
    net.clock.advance(1);
    assert.ok(await through(net, 0, "a2"), "the lingering tunnel still delivers");
    assert.ok(await until(hasCookie(net, 0)), "and sends the cookie again");
    assert.ok(await through(net, 0, "a3"));
    assert.equal(net.server.resumes, 1);
  },
);

evictionTest(
  "cookie race: a cookie that arrives twice moves the client's epoch once",
  8,
  async (net) => {
    net.pausedToClients = [];
    await evictClient0(net);
    net.clock.advance(1);
    assert.ok(
      await through(net, 0, "a2"),
      "the lingering tunnel delivers, sends the cookie again",
    );
    const epoch = clientPeer(net, 0)!.session.receiveEpoch;
    net.flushToClients();
    assert.ok(await until(() => net.clients[0].device.drops.get("cookie-again") === 1));
    assert.equal(clientPeer(net, 0)!.session.receiveEpoch, epoch + 1);
    assert.ok(await through(net, 0, "a3"));
    assert.equal(net.server.resumes, 1);
    assert.ok(net.serverSend(0, "reply a3"));
    assert.ok(await until(() => texts(net.clients[0].tun).includes("reply a3")));
  },
);

evictionTest(
  "cookie race: an eviction before the tick made the new slot's cookie key still hands a cookie",
  9,
  async (net) => {
    assert.ok(await through(net, 0, "a1"));
    net.clock.advance(0.7); // into the new slot; no tick has run in it
    assert.ok(await through(net, 1, "b1"));
    assert.ok(await until(hasCookie(net, 0)), "client 0 got its cookie");
    assert.ok(await through(net, 0, "a2"));
    assert.equal(net.server.resumes, 1);
  },
  29.5, // half a second before a slot starts
);

evictionTest(
  "cookie race: old-epoch packets reordered behind the resume are delivered, once each",
  8,
  async (net) => {
    net.pausedToClients = []; // the cookie waits on its way
    const internal = await evictClient0(net);
    // Two packets the client sends before it sees the cookie (the old epoch) stay on the wire.
    const from = net.captured.length;
    net.loseFromClients = 2;
    net.clientSend(0, "late 1");
    net.clientSend(0, "late 2");
    const [late1, late2] = net.captured.slice(from);
    net.flushToClients();
    assert.ok(await until(hasCookie(net, 0)));
    assert.ok(await through(net, 0, "a3"), "the cookie and a packet of the next epoch");
    assert.equal(net.server.resumes, 1);
    // now the old epoch's packet arrives: the session that lingered opens it
    const noKey = net.server.drops.get("tunnel-no-key");
    net.fromClient(0, late1);
    assert.deepEqual(texts(net.serverTun).filter((t) => t === "late 1"), ["late 1"]);
    assert.equal(net.server.lateAfterResume, 1);
    const delivered = net.serverTun.at(-1)!;
    assert.equal(
      new DataView(delivered.buffer, delivered.byteOffset).getUint32(12),
      internal,
      "from the client's own address",
    );
    // a replay of it, and a forgery of its header, are refused and counted
    net.fromClient(0, late1);
    const forged = late2.slice();
    forged[forged.length - 1] ^= 1;
    net.fromClient(0, forged);
    assert.deepEqual(texts(net.serverTun).filter((t) => t.startsWith("late")), ["late 1"]);
    assert.equal(net.server.drops.get("tunnel-no-key"), noKey + 1);
    assert.equal(net.server.drops.get("tunnel-auth"), 1);
    // the resumed tunnel goes on both ways; nothing was sealed with a key used before
    assert.ok(await through(net, 0, "a4"));
    assert.ok(net.serverSend(0, "reply a4"));
    assert.ok(await until(() => texts(net.clients[0].tun).includes("reply a4")));
    // RESUMED_SECONDS later the old session is gone: the other late packet is refused
    net.clock.advance(3);
    await net.serverTick();
    net.fromClient(0, late2);
    assert.ok(!texts(net.serverTun).includes("late 2"));
    assert.equal(net.server.drops.get("tunnel-no-key"), noKey + 2);
    assert.equal(net.server.lateAfterResume, 1);
  },
);

evictionTest(
  "cookie race: the session kept after a resume ends with the resumed tunnel",
  9,
  async (net) => {
    net.pausedToClients = [];
    await evictClient0(net);
    const from = net.captured.length;
    net.loseFromClients = 1;
    net.clientSend(0, "late");
    const late = net.captured[from];
    net.flushToClients();
    assert.ok(await until(hasCookie(net, 0)));
    assert.ok(await through(net, 0, "a3"));
    // client 1 comes back and evicts client 0's resumed tunnel within RESUMED_SECONDS: its
    // address may go to another client, so the old session must not deliver from it
    assert.ok(await until(hasCookie(net, 1)), "client 1 got its cookie");
    assert.ok(await through(net, 1, "b2"));
    assert.equal(net.server.resumes, 2);
    assert.equal(serverPeer(net, 0), undefined);
    net.fromClient(0, late);
    assert.ok(!texts(net.serverTun).includes("late"));
    assert.equal(net.server.lateAfterResume, 0);
  },
);

evictionTest(
  "cookie race: a lingering tunnel ends after its time; its address is free again",
  7,
  async (net) => {
    net.pausedToClients = [];
    await evictClient0(net);
    net.clock.advance(11);
    await net.serverTick();
    assert.equal(net.server.lingeringPeers.size, 0);
    const unknown = net.server.drops.get("tunnel-unknown-tid");
    net.clientSend(0, "too late");
    assert.ok(await until(() => net.server.drops.get("tunnel-unknown-tid") > unknown));
    // the cookie still resumes the tunnel, at a fresh address
    net.flushToClients();
    assert.ok(await until(hasCookie(net, 0)));
    assert.ok(await through(net, 0, "a3"));
    assert.equal(net.server.resumes, 1);
  },
);

Deno.test("session: capped at the cookie's epoch, it never holds a key of the next", () => {
  const tid = crypto.getRandomValues(new Uint8Array(32));
  const a = crypto.getRandomValues(new Uint8Array(32));
  const b = crypto.getRandomValues(new Uint8Array(32));
  const client = TunnelSession.create(tid, a.slice(), b.slice(), 0);
  const server = TunnelSession.create(tid, b.slice(), a.slice(), 0);
  const old = client.sealPacket(new Uint8Array([1]), 1);
  const state = server.cookieState(1)!;
  assert.equal(state.epoch, 0);
  server.capAtCookieEpoch();
  const resumed = TunnelSession.fromCookie(tid, state.epoch, state.sendRoot, state.recvRoot, 2);
  // the capped session still opens the old epoch and sends in it
  assert.ok(server.openPacket(old, 2).ok);
  const reply = server.sealPacket(new Uint8Array([2]), 2);
  assert.ok(client.openPacket(reply, 2).ok);
  // the client adopts the next epoch (as on a cookie): that is the rebuilt session's alone
  client.adoptCookieEpoch(3);
  const next = client.sealPacket(new Uint8Array([3]), 3);
  assert.deepEqual(server.openPacket(next, 3), { ok: false, reason: "no-key" });
  assert.ok(resumed.openPacket(next, 3).ok);
  assert.ok(client.openPacket(resumed.sealPacket(new Uint8Array([4]), 3), 3).ok);
  // once its epoch is over, the capped session cannot send rather than move on
  assert.throws(() => server.sealPacket(new Uint8Array([5]), 1 + EPOCH_SECONDS + 1));
  server.close();
  client.close();
  resumed.close();
});

netTest(
  "cookie race: with every address in use, an evicted tunnel still lingers with its address",
  async (pool) => {
    // A /28: 13 addresses. --max-peers above that (as the default 65536 is on a /16): the table
    // keeps 10 tunnels, so the 3 that linger at most keep their addresses. Before, the pool ran
    // out first, each new tunnel ended a lingering one to take its address, and a client that
    // came back with its cookie got another address.
    assert.deepEqual(peerLimits(100, 13), { peers: 10, lingering: 3 });
    assert.deepEqual(peerLimits(65536, 65533), { peers: 65277, lingering: 256 });
    assert.deepEqual(peerLimits(1, 65533), { peers: 1, lingering: 256 });
    const net = await DeviceNet.start(pool, new Prng(7), new StderrLogger("test", "error"), {
      maxPeers: 100,
      clients: 14,
      prefix: 28,
    });
    try {
      assert.equal(net.server.maxPeers, 10);
      for (let i = 0; i < 14; i++) assert.ok(await through(net, i, `hello ${i}`), `client ${i}`);
      // Clients 0-3 were evicted, the oldest first; the 3 latest linger, client 0 made room.
      const internal = lingering(net, 3)?.internal;
      assert.ok(internal !== undefined, "client 3's tunnel lingers");
      assert.equal(
        net.server.drops.get("linger-no-address"),
        0,
        "no lingering tunnel lost its address",
      );
      assert.ok(await through(net, 3, "back 1"), "sent in the old epoch, it arrives");
      assert.ok(await until(hasCookie(net, 3)));
      assert.ok(await through(net, 3, "back 2"), "with its cookie: resumed");
      assert.equal(net.server.resumes, 1);
      assert.equal(
        serverPeer(net, 3)?.internal,
        internal,
        "the resumed tunnel got its address back",
      );
      assert.deepEqual(net.ledger.reuses, [], "a packet key sealed twice");
    } finally {
      net.close();
    }
  },
);
