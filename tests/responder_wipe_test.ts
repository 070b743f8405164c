// Issue 10, point 2: the server's handshake responder erases every secret it made, on every
// way out: done, replayed, refused, a slot gone, a KEM that throws. The test keeps references
// to the buffers (the shared secrets the KEMs returned, and the list the device erased,
// chaining key and roots included) and checks they are all zero after each outcome.

import assert from "node:assert/strict";
import { fixture } from "./fixtures.ts";
import { CryptoPool } from "../lib/runtime/crypto_pool.ts";
import { StderrLogger } from "../lib/runtime/log.ts";
import { ServerDevice } from "../lib/server/device.ts";
import { EphemeralKeyStore } from "../lib/core/ephemeral.ts";
import { CookieKeyring } from "../lib/core/cookie.ts";
import { initiate, parseInitiation } from "../lib/core/handshake.ts";
import { respondInitiation } from "../lib/core/responder.ts";
import { loadKemBackend } from "../lib/runtime/kem_backend.ts";
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";
import { x25519PublicKey } from "../lib/core/crypto.ts";
import { ipv4ToNumber } from "../lib/core/ip.ts";
import { until } from "./helpers/device_net.ts";
import { InThreadResponder } from "./helpers/in_thread_responder.ts";

const quiet = new StderrLogger("test", "error");
const WALL = 1_700_000_010;

/** An ephemeral store that loses a slot right after it was first looked up. */
class ForgetfulStore extends EphemeralKeyStore {
  private looked = new Set<number>();
  override get(slot: number) {
    if (this.looked.has(slot)) return null;
    this.looked.add(slot);
    return super.get(slot);
  }
}

interface Outcome {
  drop: string | null;
  secrets: Uint8Array[];
}

/** A client's initiation to the fixture server, its encapsulations done by `pool`. */
async function initiationThroughPool(
  pool: CryptoPool,
  pkId: number,
  sntrupPk: Uint8Array,
  ephemeralX25519Sk: Uint8Array,
) {
  const mc = await pool.mcelieceEncap(pkId);
  const nt = await pool.sntrupEncap(sntrupPk);
  const e = crypto.getRandomValues(new Uint8Array(32));
  return initiate({
    mcelieceCt: mc.ciphertext,
    mcelieceSs: mc.sharedSecret,
    clientX25519Sk: e,
    clientX25519Pk: x25519PublicKey(e),
    serverStaticX25519Pk: fixture("x25519_pk"),
    serverEphemeralX25519Pk: x25519PublicKey(ephemeralX25519Sk),
    sntrupCt: nt.ciphertext,
    sntrupSs: nt.sharedSecret,
  });
}

/** Sets a padding bit of c0 (bits 1547..1551 of its 194 bytes): every McEliece KEM refuses it. */
function padC0(message: Uint8Array): Uint8Array {
  const m = message.slice();
  m[2 + 193] |= 0x80;
  return m;
}

/**
 * One handshake through the device's responder path, answered by the same core responder the
 * workers run (on this thread, so the test sees its intermediate secrets too).
 */
async function scenario(
  pool: CryptoPool,
  opts: {
    store?: EphemeralKeyStore;
    /** c0 from another encapsulation: the McEliece shared secret is not the client's. */
    wrongMcelieceSs?: boolean;
    /** c0 with a padding bit set: the KEM throws. */
    mcelieceRefuses?: boolean;
    /** Fill the replay cache before the handshake. */
    fullReplayCache?: boolean;
    twice?: boolean;
  },
): Promise<Outcome[]> {
  const store = opts.store ?? new EphemeralKeyStore();
  const kp = await pool.sntrupKeypair();
  const ex = crypto.getRandomValues(new Uint8Array(32));
  store.add({
    slot: WALL - (WALL % 30),
    sntrupPk: kp.publicKey,
    sntrupSk: kp.secretKey,
    x25519Pk: x25519PublicKey(ex),
    x25519Sk: ex,
  });
  const responder = await InThreadResponder.start(store);
  const made: Uint8Array[] = []; // the responder's intermediate secrets, after their erasure
  responder.onSecrets = (s) => made.push(...s);
  const device = new ServerDevice(
    {
      tunAddress: ipv4ToNumber("10.42.0.1"),
      prefix: 16,
      hostAddress: ipv4ToNumber("198.18.0.1"),
      maxPeers: 4,
      maxPendingHandshakes: 4,
      replayHashKey: crypto.getRandomValues(new Uint8Array(8)),
      // full sooner: filling it is what counts, not its size
      replayCapacity: opts.fullReplayCache ? 4096 : undefined,
    },
    { sendUdp: () => {}, writeTun: () => {} },
    responder,
    store,
    new CookieKeyring(fixture("session_key"), crypto.getRandomValues(new Uint8Array(32))),
    quiet,
    { mono: () => 1000, wall: () => WALL },
  );
  if (opts.fullReplayCache) {
    // a full replay cache: the handshake must be refused, its secrets erased
    while (device.replay.size < device.replay.capacity) {
      device.replay.add(crypto.getRandomValues(new Uint8Array(194)), 1000);
    }
  }
  const outcomes: Outcome[] = [];
  device.onHandshakeSecrets = (s) => outcomes.push({ drop: null, secrets: [...s] });
  const pkId = await pool.registerMcEliecePublicKey(fixture("mceliece_pk"));
  let message = (await initiationThroughPool(pool, pkId, kp.publicKey, ex)).message;
  if (opts.wrongMcelieceSs) {
    const other = await pool.mcelieceEncap(pkId);
    message = message.slice();
    message.set(other.ciphertext, 2);
  }
  if (opts.mcelieceRefuses) message = padC0(message);
  const before = device.drops.snapshot();
  device.onDatagram(message.slice(), ipv4ToNumber("198.18.0.2"), 42423);
  if (opts.twice) device.onDatagram(message.slice(), ipv4ToNumber("198.18.0.2"), 42423);
  assert.ok(await until(() => outcomes.length === 1, 10_000), "handshake finished");
  await until(() => false, 5); // a second answer, if there were one, would be in by now
  const after = device.drops.snapshot();
  // the handshake's own drop reason (a refused copy counts "handshake-replay" at admission)
  const grew = Object.keys(after).filter((k) =>
    after[k] !== (before[k] ?? 0) && !(opts.twice && k === "handshake-replay")
  );
  if (opts.twice) assert.equal(after["handshake-replay"], 1, "the copy was refused");
  outcomes.forEach((o, i) => o.drop = grew[i] ?? null);
  for (const o of outcomes) o.secrets.push(...made);
  device.close();
  return outcomes;
}

function assertErased(o: Outcome, what: string, expectedCount: number): void {
  assert.equal(o.secrets.length, expectedCount, `${what}: secrets seen`);
  for (const [i, s] of o.secrets.entries()) {
    assert.ok(s.length === 32 && s.every((b) => b === 0), `${what}: secret ${i} not erased`);
  }
}

Deno.test({
  name: "responder: every secret of a handshake is erased on every way out",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
    try {
      // done: both roots (the device's), McEliece ss, chaining key, sntrup ss (the responder's)
      const [ok] = await scenario(pool, {});
      assert.equal(ok.drop, null);
      assertErased(ok, "completed", 2 + 3);
      // c1 does not open: only the McEliece shared secret exists
      const [auth] = await scenario(pool, { wrongMcelieceSs: true });
      assert.equal(auth.drop, "handshake-auth");
      assertErased(auth, "auth", 1);
      // the slot vanished between finding it and using it: the chaining key is made by then
      const [slot] = await scenario(pool, { store: new ForgetfulStore() });
      assert.equal(slot.drop, "handshake-slot-expired");
      assertErased(slot, "slot expired", 2);
      // McEliece decapsulation refuses c0: nothing was made
      const [mceliece] = await scenario(pool, { mcelieceRefuses: true });
      assert.equal(mceliece.drop, "handshake-rejected");
      assertErased(mceliece, "McEliece refuses", 0);
      // the same message twice at once: the copy is refused at admission, before any work
      const [once, ...none] = await scenario(pool, { twice: true });
      assert.equal(none.length, 0, "the copy made no secrets");
      assert.deepEqual(once.drop, null);
      assertErased(once, "the first of two", 2 + 3);
      // the replay cache is full: refused after all the work
      const [full] = await scenario(pool, { fullReplayCache: true });
      assert.equal(full.drop, "handshake-replay-full");
      assertErased(full, "replay cache full", 2 + 3);
    } finally {
      await pool.close();
    }
  },
});

// The same check for the responder the crypto workers run (lib/core/responder.ts): one call that
// decapsulates, opens, decapsulates again and finishes. Run in-process here on the real KEMs, so
// the test sees every intermediate secret it made.
Deno.test("worker responder: every intermediate secret is erased on every way out", async () => {
  installAeadBackend();
  const kems = await loadKemBackend("auto");
  const dec = kems.mceliece.decapsulator(fixture("mceliece_sk"));
  const enc = kems.mceliece.encapsulator(fixture("mceliece_pk"));
  const kp = kems.sntrup.keypair();
  const ex = crypto.getRandomValues(new Uint8Array(32));
  const slotId = WALL - (WALL % 30);
  const message = () => {
    const mc = enc.encapsulate();
    const nt = kems.sntrup.encapsulate(kp.publicKey);
    const e = crypto.getRandomValues(new Uint8Array(32));
    return parseInitiation(
      initiate({
        mcelieceCt: mc.ciphertext,
        mcelieceSs: mc.sharedSecret,
        clientX25519Sk: e,
        clientX25519Pk: x25519PublicKey(e),
        serverStaticX25519Pk: fixture("x25519_pk"),
        serverEphemeralX25519Pk: x25519PublicKey(ex),
        sntrupCt: nt.ciphertext,
        sntrupSs: nt.sharedSecret,
      }).message,
    )!;
  };
  const run = (opts: { wrongSs?: boolean; noSlot?: boolean; sntrupThrows?: boolean }) => {
    const seen: Uint8Array[] = [];
    let outcome: unknown = "threw";
    try {
      outcome = respondInitiation(
        message(),
        {
          mcelieceDecap: (c0) => {
            const ss = dec.decapsulate(c0);
            if (opts.wrongSs) ss[0] ^= 1;
            return ss;
          },
          sntrupDecap: (ct, slot) => {
            if (opts.sntrupThrows) throw new Error("decapsulation failed");
            return opts.noSlot || slot !== slotId
              ? null
              : kems.sntrup.decapsulate(ct, kp.secretKey);
          },
        },
        fixture("x25519_sk"),
        [{ x25519Sk: ex, id: slotId }],
        (s) => seen.push(...s),
      );
    } catch { /* the worker replies with the error; the secrets must be gone all the same */ }
    for (const [i, s] of seen.entries()) {
      assert.ok(s.length === 32 && s.every((b) => b === 0), `secret ${i} not erased`);
    }
    return { outcome, seen: seen.length };
  };
  const ok = run({});
  assert.equal((ok.outcome as { ok: boolean }).ok, true);
  assert.equal(ok.seen, 3, "McEliece ss, chaining key, sntrup ss");
  assert.deepEqual(run({ wrongSs: true }), { outcome: { ok: false, reason: "auth" }, seen: 1 });
  assert.deepEqual(run({ noSlot: true }), {
    outcome: { ok: false, reason: "slot-expired" },
    seen: 2,
  });
  assert.deepEqual(run({ sntrupThrows: true }), { outcome: "threw", seen: 2 });
  dec.dispose();
  enc.dispose();
});

// And the daemon's path: the worker answers a whole handshake, the reply waits until the packet
// loop hands it over (CryptoPool.finishDeferred), and the device erases the two roots.
Deno.test({
  name: "responder in the crypto worker: a handshake completes, the roots are erased",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pool = await CryptoPool.start({
      mcelieceSecretKey: fixture("mceliece_sk"),
      x25519SecretKey: fixture("x25519_sk"),
      workers: 2,
    });
    try {
      const store = new EphemeralKeyStore();
      const kp = await pool.sntrupKeypair();
      const ex = crypto.getRandomValues(new Uint8Array(32));
      const slot = WALL - (WALL % 30);
      store.add({
        slot,
        sntrupPk: kp.publicKey,
        sntrupSk: kp.secretKey,
        x25519Pk: x25519PublicKey(ex),
        x25519Sk: ex,
      });
      await pool.addEphemeral(slot, ex, kp.secretKey);
      const device = new ServerDevice(
        {
          tunAddress: ipv4ToNumber("10.42.0.1"),
          prefix: 16,
          hostAddress: ipv4ToNumber("198.18.0.1"),
          maxPeers: 4,
          maxPendingHandshakes: 4,
          replayHashKey: crypto.getRandomValues(new Uint8Array(8)),
        },
        { sendUdp: () => {}, writeTun: () => {} },
        { respondDeferred: (d, s, done) => pool.respondDeferred(d, s, done) },
        store,
        new CookieKeyring(fixture("session_key"), crypto.getRandomValues(new Uint8Array(32))),
        quiet,
        { mono: () => 1000, wall: () => WALL },
      );
      const outcomes: Uint8Array[][] = [];
      device.onHandshakeSecrets = (s) => outcomes.push([...s]);
      const pkId = await pool.registerMcEliecePublicKey(fixture("mceliece_pk"));
      const send = async (change = (m: Uint8Array) => m) => {
        const hs = await initiationThroughPool(pool, pkId, kp.publicKey, ex);
        device.onDatagram(change(hs.message.slice()), ipv4ToNumber("198.18.0.2"), 42423);
      };
      // What the daemon's packet loop does each round: finish at most a few filed replies.
      const finished = (n: number) => () => {
        pool.finishDeferred(1);
        return outcomes.length === n;
      };
      await send();
      assert.ok(await until(() => pool.deferredWaiting === 1, 10_000), "the reply is filed");
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(outcomes.length, 0, "nothing finishes before the loop hands it over");
      assert.equal(pool.finishDeferred(8), 0, "one reply finished, none left");
      assert.ok(await until(finished(1), 10_000), "handshake finished");
      assert.equal(device.handshakes, 1, "the worker answered it");
      assert.equal(outcomes[0].length, 2, "both roots came back");
      for (const s of outcomes[0]) assert.ok(s.every((b) => b === 0), "root erased");
      // The worker's KEM refuses c0: the error reply is a counted rejection, nothing made.
      await send(padC0);
      assert.ok(await until(finished(2), 10_000), "refused handshake over");
      assert.equal(device.drops.snapshot()["handshake-rejected"], 1, "the KEM refused c0");
      assert.equal(outcomes[1].length, 0, "no secret reached the device");
      // The slot expires: every worker erases it, and a handshake for it fails to open.
      await pool.keepEphemeral([]);
      await send();
      assert.ok(await until(finished(3), 10_000), "third handshake over");
      assert.equal(device.handshakes, 1);
      assert.equal(device.drops.snapshot()["handshake-auth"], 1, "no slot opened c3");
      assert.equal(pool.outstanding, 0, "nothing left in the workers");
      device.close();
    } finally {
      await pool.close();
    }
  },
});
