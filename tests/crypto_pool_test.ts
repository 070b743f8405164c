// CryptoPool against a real worker and the real WASM KEMs. Needs --allow-read for
// tests/fixtures, wasm/crypto_worker.ts and wasm/kem.ts.
import assert from "node:assert/strict";
import {
  CryptoPool,
  CryptoPoolClosedError,
  CryptoPoolError,
  CryptoPoolFullError,
} from "../lib/runtime/crypto_pool.ts";
import { KemRejectedError } from "../wasm/kem.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);
const fixture = (name: string) => Deno.readFileSync(new URL(name, FIXTURES));

function hex(s: string): Uint8Array {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

interface Case {
  ct: string;
  ss: string;
}
const vectors: { kem_decaps: Record<string, { cases: Case[] }> } = JSON.parse(
  new TextDecoder().decode(fixture("reference-vectors.json")),
);
const mcCases = vectors.kem_decaps.mceliece6960119.cases;
const snCases = vectors.kem_decaps.sntrup761.cases;

for (const kem of ["wasm", "native"] as const) {
  Deno.test(`${kem}: server key: vectors decapsulate in the worker, concurrently, matched by id`, async () => {
    const sk = fixture("mceliece_sk");
    const before = sk.slice();
    await using pool = await CryptoPool.start({ mcelieceSecretKey: sk, kem });
    assert.equal(pool.backend, kem);
    // The caller's copy is neither detached nor altered by handing it to the worker.
    assert.deepEqual(sk, before);

    const cts = mcCases.map((c) => hex(c.ct));
    const got = await Promise.all([...cts, ...cts].map((ct) => pool.mcelieceDecap(ct)));
    assert.deepEqual(got, [...mcCases, ...mcCases].map((c) => hex(c.ss)));
    assert.equal(cts[0].length, 194, "input buffers stay with the caller");
    assert.equal(got[0].buffer.byteLength, 32, "each result owns its buffer");
    assert.deepEqual(pool.stats, {
      submitted: 6,
      completed: 6,
      failed: 0,
      rejectedFull: 0,
      pending: 0,
    });
  });
}

Deno.test("registered public key: precomputed ciphertexts open with the server key", async () => {
  await using pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
  const pkId = await pool.registerMcEliecePublicKey(fixture("mceliece_pk"));
  const stock = await Promise.all(Array.from({ length: 6 }, () => pool.mcelieceEncap(pkId)));
  assert.equal(new Set(stock.map((e) => e.ciphertext.join())).size, 6);
  for (const e of stock) {
    assert.equal(e.ciphertext.length, 194);
    assert.deepEqual(await pool.mcelieceDecap(e.ciphertext), e.sharedSecret);
  }
  const other = await pool.registerMcEliecePublicKey(fixture("mceliece_pk"));
  assert.notEqual(other, pkId);
  await pool.unregisterMcEliecePublicKey(pkId);
  await assert.rejects(pool.mcelieceEncap(pkId), /unknown McEliece public key id/);
  assert.equal((await pool.mcelieceEncap(other)).ciphertext.length, 194);
});

Deno.test("sntrup761: keypair, encap and decap through the worker", async () => {
  await using pool = await CryptoPool.start();
  const { publicKey, secretKey } = await pool.sntrupKeypair();
  assert.equal(publicKey.length, 1158);
  assert.equal(secretKey.length, 1763);
  const e = await pool.sntrupEncap(publicKey);
  assert.deepEqual(await pool.sntrupDecap(e.ciphertext, secretKey), e.sharedSecret);
  assert.equal(secretKey.length, 1763, "caller's secret key is not detached");
  assert.ok(secretKey.some((b) => b !== 0), "caller's secret key is not wiped");

  const refSk = fixture("sntrup761_sk");
  const got = await Promise.all(snCases.map((c) => pool.sntrupDecap(hex(c.ct), refSk)));
  assert.deepEqual(got, snCases.map((c) => hex(c.ss)));
});

Deno.test("errors: rejected ciphertexts, bad lengths, missing server key", async () => {
  await using pool = await CryptoPool.start();
  await assert.rejects(pool.mcelieceDecap(hex(mcCases[0].ct)), /no McEliece secret key/);
  await assert.rejects(pool.mcelieceDecap(new Uint8Array(193)), RangeError);
  await assert.rejects(pool.sntrupDecap(new Uint8Array(1039), new Uint8Array(1762)), RangeError);
  await assert.rejects(pool.sntrupEncap(new Uint8Array(1157)), RangeError);
  await assert.rejects(pool.registerMcEliecePublicKey(new Uint8Array(10)), RangeError);
  await assert.rejects(
    CryptoPool.start({ mcelieceSecretKey: new Uint8Array(13947) }),
    /secret key must be 13948 bytes/,
  );
  await assert.rejects(CryptoPool.start({ maxPending: 0 }), RangeError);
  assert.equal(pool.stats.submitted, 0, "invalid requests never reach the worker");

  await using keyed = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
  const padded = hex(mcCases[0].ct);
  padded[193] |= 0x80;
  await assert.rejects(keyed.mcelieceDecap(padded), KemRejectedError);
  const pk = fixture("mceliece_pk");
  pk[676] |= 0x80;
  const badId = await keyed.registerMcEliecePublicKey(pk);
  await assert.rejects(keyed.mcelieceEncap(badId), KemRejectedError);
  // A corrupted (well-padded) ciphertext is implicitly rejected: a value, not an error.
  const flipped = hex(mcCases[0].ct);
  flipped[0] ^= 1;
  const ss = await keyed.mcelieceDecap(flipped);
  assert.notDeepEqual(ss, hex(mcCases[0].ss));
  assert.equal(keyed.stats.failed, 2);
  assert.equal(keyed.stats.completed, 2);
});

Deno.test("bounded queue: excess requests are refused and counted", async () => {
  await using pool = await CryptoPool.start({
    mcelieceSecretKey: fixture("mceliece_sk"),
    maxPending: 2,
  });
  const ct = hex(mcCases[0].ct);
  const results = await Promise.allSettled(
    Array.from({ length: 5 }, () => pool.mcelieceDecap(ct)),
  );
  const ok = results.filter((r) => r.status === "fulfilled");
  const full = results.filter((r) =>
    r.status === "rejected" && r.reason instanceof CryptoPoolFullError
  );
  assert.equal(ok.length, 2);
  assert.equal(full.length, 3);
  assert.deepEqual(pool.stats, {
    submitted: 2,
    completed: 2,
    failed: 0,
    rejectedFull: 3,
    pending: 0,
  });
  // Room frees up as replies arrive.
  assert.deepEqual(await pool.mcelieceDecap(ct), hex(mcCases[0].ss));
});

Deno.test("close: drains submitted work, then refuses; idempotent", async () => {
  const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
  const inFlight = mcCases.map((c) => pool.mcelieceDecap(hex(c.ct)));
  const closing = pool.close();
  await assert.rejects(pool.sntrupKeypair(), CryptoPoolClosedError);
  assert.deepEqual(await Promise.all(inFlight), mcCases.map((c) => hex(c.ss)));
  await closing;
  await pool.close();
  await assert.rejects(pool.mcelieceDecap(hex(mcCases[0].ct)), CryptoPoolClosedError);
  assert.equal(pool.stats.completed, 3);
  assert.equal(pool.stats.pending, 0);
});

Deno.test("close: a timeout terminates the worker and fails what is left", async () => {
  // WASM: 40 decapsulations take seconds there, so the 1 ms timeout surely cuts some off.
  const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk"), kem: "wasm" });
  const ct = hex(mcCases[0].ct);
  const work = Array.from({ length: 40 }, () => pool.mcelieceDecap(ct));
  await pool.close(1);
  const settled = await Promise.allSettled(work);
  const cut = settled.filter((r) =>
    r.status === "rejected" && r.reason instanceof CryptoPoolClosedError
  );
  assert.ok(cut.length > 0, "some requests must have been cut off");
  assert.ok(
    settled.every((r) => r.status === "fulfilled" || r.reason instanceof CryptoPoolError),
  );
  assert.equal(pool.stats.pending, 0);
  assert.equal(pool.stats.completed + pool.stats.failed, 40);
});

Deno.test("several workers: each holds the key, work spreads, registered keys stay put", async () => {
  await using pool = await CryptoPool.start({
    mcelieceSecretKey: fixture("mceliece_sk"),
    workers: 3,
    kem: "native",
  });
  assert.equal(pool.workers, 3);
  const cts = mcCases.map((c) => hex(c.ct));
  const many = Array.from({ length: 30 }, (_, i) => cts[i % cts.length]);
  const got = await Promise.all(many.map((ct) => pool.mcelieceDecap(ct)));
  assert.deepEqual(got, many.map((_, i) => hex(mcCases[i % mcCases.length].ss)));
  const ids = await Promise.all(
    [1, 2, 3, 4].map(() => pool.registerMcEliecePublicKey(fixture("mceliece_pk"))),
  );
  for (const id of ids) {
    const e = await pool.mcelieceEncap(id);
    assert.deepEqual(await pool.mcelieceDecap(e.ciphertext), e.sharedSecret);
  }
  assert.equal(pool.stats.pending, 0);
  assert.equal(pool.stats.failed, 0);
  await assert.rejects(CryptoPool.start({ workers: 0 }), RangeError);
});

Deno.test("pool: the requests of one turn travel to each worker as one message", async () => {
  const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk"), workers: 2 });
  try {
    const cases = Array.from({ length: 40 }, (_, i) => mcCases[i % mcCases.length]);
    const got = await Promise.all(cases.map((c) => pool.mcelieceDecap(hex(c.ct))));
    got.forEach((ss, i) => assert.deepEqual(ss, hex(cases[i].ss)));
    assert.equal(pool.stats.submitted, 40);
    assert.equal(pool.messagesPosted, 2, "one batch per worker");
  } finally {
    await pool.close();
  }
});
