// Admission control: what a flood of initiations meets before any decapsulation. The pure parts
// (token buckets, the expiring queue), then the server device with a real crypto pool: rate
// limiting, replay refusal and stale entries all happen before the worker sees a ciphertext,
// and early packets are held per client.

import assert from "node:assert/strict";
import { fixture } from "./fixtures.ts";
import { HandshakeQueue, InitiationLimiter } from "../lib/core/admission.ts";
import { ServerDevice } from "../lib/server/device.ts";
import { CryptoPool } from "../lib/runtime/crypto_pool.ts";
import { EphemeralKeyStore } from "../lib/core/ephemeral.ts";
import { CookieKeyring } from "../lib/core/cookie.ts";
import { x25519PublicKey } from "../lib/core/crypto.ts";
import { ipv4ToNumber } from "../lib/core/ip.ts";
import { StderrLogger } from "../lib/runtime/log.ts";
import { nativeKemBackend } from "../lib/runtime/kem_backend.ts";
import { prepareInitiation, randomInitiation } from "./helpers/initiations.ts";
import { InThreadResponder } from "./helpers/in_thread_responder.ts";

Deno.test("token buckets: burst, refill at the rate, bounded table", () => {
  const l = new InitiationLimiter(5, 10, 4);
  let ok = 0;
  for (let i = 0; i < 50; i++) if (l.allow(1, 0)) ok++;
  assert.equal(ok, 10, "a burst of 10");
  assert.equal(l.allow(1, 0.1), false, "half a token is not one");
  assert.equal(l.allow(1, 0.2), true, "5 per second");
  assert.equal(l.allow(2, 0), true, "another address has its own bucket");
  for (let h = 3; h < 10; h++) l.allow(h, 1);
  assert.equal(l.size, 4, "the table keeps its bound");
});

Deno.test("handshake queue: bounded, FIFO, stale entries skipped and reported", () => {
  const q = new HandshakeQueue<number>(3, 1);
  assert.ok(q.push(1, 0) && q.push(2, 0.5) && q.push(3, 0.9));
  assert.equal(q.push(4, 0.9), false, "full: the newcomer is refused");
  const stale: number[] = [];
  assert.equal(q.take(1.2, (s) => stale.push(s)), 2);
  assert.deepEqual(stale, [1]);
  assert.equal(q.take(1.2, (s) => stale.push(s)), 3);
  assert.equal(q.take(1.2, (s) => stale.push(s)), null);
  assert.equal(q.length, 0);
});

async function setup(maxPendingHandshakes: number, handshakeQueue?: number) {
  const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk"), kem: "native" });
  const clock = { t: 100, wall: 1_800_000_000 };
  const ephemeral = new EphemeralKeyStore();
  const tun: Uint8Array[] = [];
  const responder = await InThreadResponder.start(ephemeral);
  const device = new ServerDevice(
    {
      tunAddress: ipv4ToNumber("10.42.0.1"),
      prefix: 16,
      hostAddress: ipv4ToNumber("198.18.0.1"),
      maxPeers: 64,
      maxPendingHandshakes,
      handshakeQueue,
      replayHashKey: crypto.getRandomValues(new Uint8Array(8)),
    },
    { sendUdp: () => {}, writeTun: (p) => void tun.push(p.slice()) },
    responder,
    ephemeral,
    new CookieKeyring(fixture("session_key"), new Uint8Array(32)),
    new StderrLogger("test", "error"),
    { mono: () => clock.t, wall: () => clock.wall },
  );
  for (const slot of ephemeral.due(clock.wall)) {
    const kp = await pool.sntrupKeypair();
    const x = crypto.getRandomValues(new Uint8Array(32));
    ephemeral.add({
      slot,
      sntrupPk: kp.publicKey,
      sntrupSk: kp.secretKey,
      x25519Pk: x25519PublicKey(x),
      x25519Sk: x,
    });
  }
  const live = ephemeral.live(clock.wall)[0];
  const kems = nativeKemBackend()!;
  const enc = kems.mceliece.encapsulator(fixture("mceliece_pk"));
  const server = {
    x25519Pk: fixture("x25519_pk"),
    ephemeralX25519Pk: live.x25519Pk,
    ephemeralSntrupPk: live.sntrupPk,
  };
  const valid = () => prepareInitiation(enc, kems.sntrup, server);
  const settle = async () => {
    for (
      let i = 0;
      i < 200 && device.handshakeLoad.running + device.handshakeLoad.queued > 0;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const decapsulations = () => responder.decapsulations;
  const close = async () => {
    enc.dispose();
    device.close();
    await pool.close();
  };
  return { decapsulations, clock, device, tun, valid, settle, close };
}

/** An ICMP echo request from the client's tunnel address (any inner source is rewritten). */
function ping(): Uint8Array {
  const p = new Uint8Array(28);
  p.set([
    0x45,
    0,
    0,
    28,
    0,
    1,
    0,
    0,
    64,
    1,
    0,
    0,
    10,
    43,
    0,
    2,
    198,
    18,
    0,
    1,
    8,
    0,
    0,
    0,
    0,
    1,
    0,
    1,
  ]);
  return p;
}

Deno.test("flood from one address: rate limited before any decapsulation", async () => {
  const s = await setup(4);
  try {
    const host = ipv4ToNumber("198.18.9.9");
    for (let i = 0; i < 200; i++) s.device.onDatagram(randomInitiation(), host, 5000 + i);
    await s.settle();
    assert.equal(s.device.drops.get("handshake-rate-limited"), 194);
    assert.equal(s.decapsulations(), 6, "only the burst reached the worker");
    assert.equal(s.device.drops.get("handshake-auth"), 6);
    // A real client on its own address is not affected.
    const real = s.valid();
    s.device.onDatagram(real.message, ipv4ToNumber("198.18.0.2"), 4000);
    await s.settle();
    assert.equal(s.device.handshakes, 1);
  } finally {
    await s.close();
  }
});

Deno.test("a spoofer at a real client's address: the global overdraft lets the client in", async () => {
  const s = await setup(8); // an overdraft of 8 / 2 = 4 over-rate initiations a second, burst 4
  try {
    const host = ipv4ToNumber("198.18.9.9");
    // The spoofer empties the address's bucket (burst 6), one initiation at a time.
    for (let i = 0; i < 6; i++) {
      s.device.onDatagram(randomInitiation(), host, 6000);
      await s.settle();
    }
    assert.equal(s.device.drops.get("handshake-rate-limited"), 0);
    // The real client, on the same address, another port: over the address's rate, but
    // nothing is queued, so the overdraft admits it.
    const real = s.valid();
    s.device.onDatagram(real.message, host, 4000);
    await s.settle();
    assert.equal(s.device.handshakes, 1, "the client got its tunnel");
    // The overdraft is bounded: of 8 more over-rate initiations at the same instant, 3 take
    // what is left of its burst and 5 are refused; a second later, 3 from the address's bucket
    // and 4 from the overdraft get in, 13 of 20 are refused.
    for (let i = 0; i < 8; i++) {
      s.device.onDatagram(randomInitiation(), host, 6000);
      await s.settle();
    }
    assert.equal(s.device.drops.get("handshake-rate-limited"), 5);
    s.clock.t += 1;
    for (let i = 0; i < 20; i++) {
      s.device.onDatagram(randomInitiation(), host, 6000);
      await s.settle();
    }
    assert.equal(s.device.drops.get("handshake-rate-limited"), 5 + 13);
    assert.equal(s.decapsulations(), 6 + 2 + 3 + 7, "every admitted one, and nothing else");
  } finally {
    await s.close();
  }
});

Deno.test("the overdraft admits nothing while handshakes wait for a slot", async () => {
  const s = await setup(1);
  try {
    const host = ipv4ToNumber("198.18.9.10");
    for (let i = 0; i < 6; i++) s.device.onDatagram(randomInitiation(), host, 6000);
    assert.deepEqual(s.device.handshakeLoad, { queued: 5, running: 1 });
    s.device.onDatagram(s.valid().message, host, 4000);
    assert.equal(s.device.drops.get("handshake-rate-limited"), 1, "the queue is not empty");
    await s.settle();
  } finally {
    await s.close();
  }
});

Deno.test("a replayed c0 is refused while its first copy is queued or running", async () => {
  const s = await setup(4);
  try {
    const m = s.valid().message;
    s.device.onDatagram(m, ipv4ToNumber("198.18.1.1"), 1000);
    s.device.onDatagram(m, ipv4ToNumber("198.18.1.2"), 1000);
    await s.settle();
    s.device.onDatagram(m, ipv4ToNumber("198.18.1.3"), 1000);
    assert.equal(s.device.drops.get("handshake-replay"), 2);
    assert.equal(s.device.handshakes, 1);
    assert.equal(s.decapsulations(), 2, "one McEliece and one sntrup761 decapsulation");
  } finally {
    await s.close();
  }
});

Deno.test("stale queued handshakes are dropped unstarted; a full queue refuses", async () => {
  const s = await setup(1);
  try {
    const hosts = Array.from({ length: 5 }, (_, i) => ipv4ToNumber(`198.18.2.${i + 1}`));
    for (const h of hosts) s.device.onDatagram(s.valid().message, h, 1000);
    assert.deepEqual(s.device.handshakeLoad, { queued: 4, running: 1 });
    s.clock.t += 1.5; // past the queue's age limit, before the first finishes
    await s.settle();
    assert.equal(s.device.handshakes, 1);
    assert.equal(s.device.drops.get("handshake-expired"), 4);
    assert.equal(s.decapsulations(), 2, "the stale four cost no decapsulation");
  } finally {
    await s.close();
  }
});

Deno.test("the initiations worth reading: the queue's room, none while it is full", async () => {
  const s = await setup(1, 2);
  try {
    const hosts = Array.from({ length: 4 }, (_, i) => ipv4ToNumber(`198.18.4.${i + 1}`));
    assert.equal(s.device.initiationRoom, Infinity, "nothing running: read on");
    s.device.onDatagram(s.valid().message, hosts[0], 1000);
    assert.equal(s.device.initiationRoom, 2, "one running, the queue empty");
    s.device.onDatagram(s.valid().message, hosts[1], 1000);
    assert.deepEqual(s.device.handshakeLoad, { queued: 1, running: 1 });
    assert.equal(s.device.initiationRoom, 1);
    s.device.onDatagram(s.valid().message, hosts[2], 1000);
    assert.equal(s.device.initiationRoom, 0, "full, and a running handshake will free it");
    // What the daemon no longer reads meanwhile would have been refused anyway:
    s.device.onDatagram(s.valid().message, hosts[3], 1000);
    assert.equal(s.device.drops.get("handshake-busy"), 1);
    await s.settle();
    assert.equal(s.device.initiationRoom, Infinity);
    assert.equal(s.device.handshakes, 3);
  } finally {
    await s.close();
  }
});

Deno.test("0-RTT packets are held per client and delivered once the tunnel is up", async () => {
  const s = await setup(4);
  try {
    const client = ipv4ToNumber("198.18.3.1");
    const hs = s.valid();
    s.device.onDatagram(hs.message, client, 1234);
    for (let i = 0; i < 10; i++) {
      s.device.onDatagram(hs.session.sealPacket(ping(), 0), client, 1234);
    }
    // Packets for unknown tunnels from an address with no handshake are not held at all.
    s.device.onDatagram(hs.session.sealPacket(ping(), 0), ipv4ToNumber("198.18.3.2"), 1234);
    await s.settle();
    assert.equal(s.device.handshakes, 1);
    assert.equal(s.tun.length, 8, "the last 8 were held and delivered");
    assert.equal(s.device.drops.get("tunnel-held-overflow"), 2);
    assert.equal(s.device.drops.get("tunnel-unknown-tid"), 1);
  } finally {
    await s.close();
  }
});
