// Issue 10: a wall-clock step and the replay windows. The server core counts ephemeral key slots
// and cookie keys on the wall clock it is given, and handshake replay memory on the monotonic
// one. Our server and a client in one process (tests/helpers/device_net.ts) with clocks the test
// moves: the system's wall clock steps back 100 s while a handshake's slot is live. Given that
// raw wall clock, the slot lives again after the handshake's replay entry expired, and the
// recorded handshake opens a second session with the same keys. Given the daemon's clocks
// (lib/runtime/clock.ts: start time plus monotonic time), nothing steps and the replay is
// refused.

import assert from "node:assert/strict";
import { fixture } from "./fixtures.ts";
import { CryptoPool } from "../lib/runtime/crypto_pool.ts";
import { StderrLogger } from "../lib/runtime/log.ts";
import { steadyClocks } from "../lib/runtime/clock.ts";
import { MSG_INITIATION } from "../lib/core/constants.ts";
import { DeviceNet, payloadText, type TestClock, until } from "./helpers/device_net.ts";
import { Prng } from "./helpers/prng.ts";

const quiet = new StderrLogger("test", "error");

/** The system's clocks, moved by the test: performance.now() and Date.now() in ms. */
class SystemClock {
  perfMs = 5_000_000;
  unixMs = 1_700_000_010_000; // 10 s into a 30 s slot
  advance(s: number): void {
    this.perfMs += s * 1000;
    this.unixMs += s * 1000;
  }
  /** settimeofday: only the wall clock moves. */
  step(s: number): void {
    this.unixMs += s * 1000;
  }
}

/** The device's clocks (the TestClock shape DeviceNet reads) from the system's. */
function deviceClock(sys: SystemClock, steady: boolean): TestClock {
  const c = steadyClocks(() => sys.perfMs, () => sys.unixMs);
  return {
    get mono() {
      return 1000 + c.mono();
    },
    get wall() {
      return steady ? c.wall() : sys.unixMs / 1000;
    },
    advance: (s: number) => sys.advance(s),
  } as unknown as TestClock;
}

/**
 * A client's handshake is recorded; 60 s on, the wall clock steps back 100 s; 111 s later (the
 * replay entry, kept 120-150 s, gone; by the stepped wall clock the slot is 81 s old, live) the
 * recording is sent again. Returns the handshakes the server completed (2 = the replay opened a
 * session).
 */
async function replayAcrossStep(pool: CryptoPool, steady: boolean): Promise<number> {
  const sys = new SystemClock();
  const net = await DeviceNet.start(pool, new Prng(11), quiet, {
    maxPeers: 4,
    clients: 1,
    clock: deviceClock(sys, steady),
  });
  try {
    net.clientSend(0, "a1");
    assert.ok(await until(() => net.serverTun.map(payloadText).includes("a1"), 5000));
    const initiation = net.captured.find((d) => ((d[0] << 8) | d[1]) === MSG_INITIATION)!;
    assert.ok(initiation);
    assert.equal(net.server.handshakes, 1);
    sys.advance(60);
    await net.serverTick();
    sys.step(-100);
    for (let s = 0; s < 111; s++) {
      sys.advance(1);
      await net.serverTick();
    }
    const done = net.server.handshakes;
    const drops = Object.values(net.server.drops.snapshot()).reduce((a, b) => a + b, 0);
    net.inject(initiation);
    await until(
      () =>
        net.server.handshakes > done ||
        Object.values(net.server.drops.snapshot()).reduce((a, b) => a + b, 0) > drops,
      5000,
    );
    return net.server.handshakes;
  } finally {
    net.close();
  }
}

Deno.test({
  name: "clock step: a wall clock stepping back would reopen the handshake replay window; the " +
    "daemon's does not step",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
    try {
      // Why the daemon's wall clock must not step: the core trusts it for key lifetimes.
      assert.equal(await replayAcrossStep(pool, false), 2, "raw wall clock: replay accepted");
      assert.equal(await replayAcrossStep(pool, true), 1, "steady clocks: replay refused");
    } finally {
      await pool.close();
    }
  },
});

Deno.test("clock step: steadyClocks reads as Unix time and follows only monotonic time", () => {
  const sys = new SystemClock();
  const c = steadyClocks(() => sys.perfMs, () => sys.unixMs);
  assert.equal(c.wall(), sys.unixMs / 1000);
  sys.advance(30);
  sys.step(-3600);
  assert.equal(c.mono(), 30);
  assert.equal(c.wall(), (sys.unixMs + 3600_000) / 1000);
  sys.step(7200);
  sys.advance(1);
  assert.equal(c.mono(), 31);
});
