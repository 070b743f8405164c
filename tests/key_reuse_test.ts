// Issue 10, point 1: a packet key (tunnel id, direction, epoch, counter) is sealed with once,
// across cookie evictions, resumes, replays and server restarts. Our server and clients run in
// one process (tests/helpers/device_net.ts); every tunnel packet either side sends is recorded
// off the wire, and an attacker replays what clients sent.

import assert from "node:assert/strict";
import { StderrLogger } from "../lib/runtime/log.ts";
import { COOKIE_BYTES, EPOCH_SECONDS } from "../lib/core/constants.ts";
import { isCookie } from "../lib/core/cookie.ts";
import {
  DeviceNet,
  dropTotal,
  evictionTest,
  netTest,
  texts,
  through,
  until,
} from "./helpers/device_net.ts";
import { Prng } from "./helpers/prng.ts";

const quiet = new StderrLogger("test", "error");

const hasCookie = (net: DeviceNet, i: number) => () =>
  [...net.clients[i].device.servers][0]?.peer?.cookie !== undefined;

/**
 * Injects a recorded datagram and waits until the server has dealt with it (a drop, or a
 * handshake). Returns the packets it delivered to the server's TUN device.
 */
async function replay(net: DeviceNet, datagram: Uint8Array): Promise<number> {
  const drops = dropTotal(net.server.drops);
  const handshakes = net.server.handshakes;
  const delivered = net.inject(datagram);
  await until(
    () => dropTotal(net.server.drops) > drops || net.server.handshakes > handshakes,
    3000,
  );
  return delivered;
}

evictionTest(
  "key reuse: a cookie replayed when its key is 120-150 s old rebuilds nothing",
  1,
  async (net) => {
    assert.ok(await through(net, 0, "a1"));
    net.clock.advance(1);
    assert.ok(await through(net, 1, "b1"), "client 1 in, client 0 evicted with a cookie");
    assert.ok(await until(hasCookie(net, 0)));
    net.clock.advance(1);
    assert.ok(await through(net, 0, "a2"), "client 0 resumes (client 1 evicted)");
    assert.equal(net.server.resumes, 1);
    const resumedAt = net.clock.mono;
    const resume = net.captured.find((d) => isCookie(d) && d.length > COOKIE_BYTES)!;
    assert.ok(resume, "the cookie came back in front of a tunnel packet");
    assert.ok(await until(hasCookie(net, 1)));
    net.clock.advance(1);
    assert.ok(await through(net, 1, "b2"), "client 1 resumes, client 0 evicted again");
    assert.equal(net.server.resumes, 2);
    // Past the old 120 s replay memory, while the cookie's key still lives (its slot is
    // younger than 150 s), and every tunnel has expired: the old code rebuilt the session
    // at the cookie's epoch and delivered "a2" again.
    const slot = Number(new DataView(resume.buffer, 8, 8).getBigUint64(0));
    net.clock.advance(slot + 4 * EPOCH_SECONDS + 20 - net.clock.wall);
    assert.ok(net.clock.mono - resumedAt > 120, "past the old replay memory");
    await net.serverTick();
    assert.equal(net.server.peers.size, 0);
    assert.equal(await replay(net, resume), 0, "nothing delivered twice");
    assert.equal(net.server.drops.get("cookie-replay"), 1);
    assert.equal(net.server.peers.size, 0, "no session rebuilt");
    // once the key is gone the cookie is simply unreadable
    net.clock.advance(EPOCH_SECONDS);
    await net.serverTick();
    assert.equal(await replay(net, resume), 0);
    assert.equal(net.server.drops.get("cookie-invalid"), 1);
  },
  31, // a second into a 30 s slot, so the cookie's key outlives its use by more than 120 s
);

evictionTest(
  "key reuse: the packet carrying a cookie and the rebuilt session never share a key",
  2,
  async (net) => {
    // The evicted tunnel's send epoch is due to move on when the cookie goes out: the packet
    // carrying the cookie opens the new epoch, so the cookie must name that epoch.
    assert.ok(await through(net, 0, "a1"));
    assert.ok(net.serverSend(0, "reply a1"));
    net.clock.advance(EPOCH_SECONDS + 1);
    await net.serverTick();
    assert.ok(await through(net, 1, "b1"));
    assert.ok(await until(hasCookie(net, 0)));
    // A bare cookie (no packet behind it): the server's side speaks first in the rebuilt
    // session, so it must not start in the epoch the cookie's own packet opened.
    net.fromClient(0, [...net.clients[0].device.servers][0].peer!.cookie!);
    assert.equal(net.server.resumes, 1);
    assert.ok(net.serverSend(0, "reply a2"));
    assert.ok(await until(() => texts(net.clients[0].tun).includes("reply a2")));
    // The rebuilt session's reply proved the resume to the client: it sends the cookie no more.
    const before = net.captured.length;
    assert.ok(await through(net, 0, "a2"), "the client's next packet, in the rebuilt session");
    assert.ok(net.captured.slice(before).every((d) => !isCookie(d)));
    assert.equal(net.server.drops.get("cookie-replay"), 0);
  },
);

netTest(
  "key reuse: property: evictions, resumes, replays, idle and restarts seal no key twice",
  async (pool) => {
    const seed = Number(Deno.env.get("KEY_REUSE_SEED") ?? 10);
    const steps = Number(Deno.env.get("KEY_REUSE_STEPS") ?? 160);
    const rng = new Prng(seed);
    const net = await DeviceNet.start(pool, rng, quiet, { maxPeers: 3, clients: 6 });
    const stats = { sent: 0, arrived: 0, replies: 0, replays: 0, idles: 0, restarts: 0 };
    let n = 0;
    try {
      for (let step = 0; step < steps; step++) {
        const r = rng.next();
        if (r < 0.45) {
          const i = rng.int(net.clients.length);
          stats.sent++;
          if (await through(net, i, `c${i} #${n++}`, 3000)) stats.arrived++;
        } else if (r < 0.6) {
          const i = rng.int(net.clients.length);
          if (net.serverSend(i, `s${i} #${n++}`)) stats.replies++;
        } else if (r < 0.8 && net.captured.length > 0) {
          // favour cookies: they are what could rebuild a session
          const cookies = net.captured.filter(isCookie);
          const d = cookies.length > 0 && rng.chance(0.5)
            ? rng.pick(cookies)
            : rng.pick(net.captured);
          const handshakes = net.server.handshakes;
          const resumes = net.server.resumes;
          const delivered = await replay(net, d);
          stats.replays++;
          assert.equal(delivered, 0, `seed ${seed}: a replay of ${d.length} bytes was delivered`);
          assert.equal(net.server.handshakes, handshakes, `seed ${seed}: replayed handshake`);
          assert.equal(net.server.resumes, resumes, `seed ${seed}: replayed cookie resumed`);
        } else if (r < 0.97) {
          net.clock.advance(rng.pick([1, 2, 5, 14, 31, 47, 65, 125]));
          stats.idles++;
          await net.serverTick();
          net.clientTick();
        } else {
          await net.restartServer();
          stats.restarts++;
          // the clients notice the silence and make new tunnels (devices_test covers how)
          for (let k = 0; k < 4; k++) {
            for (let i = 0; i < net.clients.length; i++) net.clientSend(i, `probe ${n++}`);
            net.clock.advance(1);
          }
          net.clientTick();
        }
        assert.deepEqual(net.ledger.reuses, [], `seed ${seed}, step ${step}`);
      }
      const summary = {
        seed,
        steps,
        ...stats,
        sealedKeys: net.ledger.sealed,
        distinctKeys: net.ledger.size,
        keyReuses: net.ledger.reuses.length,
        ...net.allCounts(),
        drops: net.allDrops(),
      };
      console.log(`key reuse property: ${JSON.stringify(summary)}`);
      assert.equal(net.ledger.sealed, net.ledger.size, "every sealed key distinct");
      assert.ok(stats.arrived >= stats.sent * 0.6, `most packets arrive: ${JSON.stringify(stats)}`);
      assert.ok(summary.resumes >= 3, "cookie resumes exercised");
      assert.ok(summary.drops["cookie-replay"] >= 1, "cookie replays exercised");
      assert.ok(summary.drops["cookie-invalid"] >= 1, "cookies of a dead server exercised");
      assert.ok(stats.restarts >= 1, "restarts exercised");
    } finally {
      net.close();
    }
  },
);
