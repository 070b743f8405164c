// KEM costs over liboqs-js WASM. Run: deno bench --allow-read bench/kem_bench.ts
// (reads tests/fixtures and loads the worker modules for the pool benchmark).
import { loadMcEliece6960119, loadSntrup761 } from "../wasm/kem.ts";
import { CryptoPool } from "../lib/runtime/crypto_pool.ts";
import { initiate, parseInitiation, respondFinish, respondOpen } from "../lib/core/handshake.ts";
import { x25519PublicKey } from "../lib/core/crypto.ts";
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";

installAeadBackend(); // the same X25519 as the workers and the server's packet thread

const FIXTURES = new URL("../tests/fixtures/", import.meta.url);
const fixture = (name: string) => Deno.readFileSync(new URL(name, FIXTURES));

const mc = await loadMcEliece6960119();
const sn = await loadSntrup761();

const mcPk = fixture("mceliece_pk");
const mcSk = fixture("mceliece_sk");
// Resident keys live for the whole process, as a client's server key or a server's own key would.
const mcEnc = mc.encapsulator(mcPk);
const mcDec = mc.decapsulator(mcSk);
const mcCt = mcEnc.encapsulate().ciphertext;

const snKeys = sn.keypair();
const snDec = sn.decapsulator(snKeys.secretKey);
const snCt = sn.encapsulate(snKeys.publicKey).ciphertext;

Deno.bench({
  name: "mceliece6960119 encapsulate (resident pk)",
  group: "mceliece",
  baseline: true,
  fn: () => {
    mcEnc.encapsulate();
  },
});

Deno.bench({
  name: "mceliece6960119 encapsulate (pk copied in per call)",
  group: "mceliece",
  fn: () => {
    mc.encapsulate(mcPk);
  },
});

Deno.bench({
  name: "mceliece6960119 decapsulate (resident sk)",
  group: "mceliece",
  fn: () => {
    mcDec.decapsulate(mcCt);
  },
});

Deno.bench({
  name: "mceliece6960119 keypair",
  group: "mceliece-keygen",
  // Seconds per call and highly variable (rejection sampling): a few samples are enough.
  n: 3,
  warmup: 0,
  fn: () => {
    mc.keypair();
  },
});

Deno.bench({
  name: "sntrup761 keypair",
  group: "sntrup761",
  fn: () => {
    sn.keypair();
  },
});

Deno.bench({
  name: "sntrup761 encapsulate",
  group: "sntrup761",
  fn: () => {
    sn.encapsulate(snKeys.publicKey);
  },
});

Deno.bench({
  name: "sntrup761 decapsulate (resident sk)",
  group: "sntrup761",
  fn: () => {
    snDec.decapsulate(snCt);
  },
});

Deno.bench({
  name: "sntrup761 decapsulate (sk copied in per call)",
  group: "sntrup761",
  fn: () => {
    sn.decapsulate(snCt, snKeys.secretKey);
  },
});

Deno.bench({
  name: "pool: 20 mceliece6960119 decapsulations via the worker",
  group: "pool",
  n: 5,
  warmup: 1,
  fn: async (b) => {
    const pool = await CryptoPool.start({ mcelieceSecretKey: mcSk });
    b.start();
    await Promise.all(Array.from({ length: 20 }, () => pool.mcelieceDecap(mcCt)));
    b.end();
    await pool.close();
  },
});

Deno.bench({
  name: "pool: 20 sntrup761 decapsulations via the worker",
  group: "pool",
  n: 20,
  warmup: 2,
  fn: async (b) => {
    const pool = await CryptoPool.start();
    b.start();
    await Promise.all(Array.from({ length: 20 }, () => pool.sntrupDecap(snCt, snKeys.secretKey)));
    b.end();
    await pool.close();
  },
});

// A whole responder handshake through the pool, as the server runs it: one round trip to a
// worker that does both decapsulations, respondOpen and respondFinish (pool.respond), against
// the two round trips of decapsulations alone with respondOpen/respondFinish on this thread.
// 100 handshakes per iteration over 2 warm workers, with the KEMs "auto" picks (native when
// loaded).
{
  const slot = 1_700_000_010;
  const ephX = crypto.getRandomValues(new Uint8Array(32));
  const eph = sn.keypair();
  const mcR = mcEnc.encapsulate();
  const snR = sn.encapsulate(eph.publicKey);
  const e = crypto.getRandomValues(new Uint8Array(32));
  const message = initiate({
    mcelieceCt: mcR.ciphertext,
    mcelieceSs: mcR.sharedSecret,
    clientX25519Sk: e,
    clientX25519Pk: x25519PublicKey(e),
    serverStaticX25519Pk: fixture("x25519_pk"),
    serverEphemeralX25519Pk: x25519PublicKey(ephX),
    sntrupCt: snR.ciphertext,
    sntrupSs: snR.sharedSecret,
  }).message;
  const msg = parseInitiation(message)!;
  const serverX = fixture("x25519_sk");
  const start = async () => {
    const pool = await CryptoPool.start({
      mcelieceSecretKey: mcSk,
      x25519SecretKey: serverX,
      workers: 2,
      maxPending: 256,
    });
    await pool.addEphemeral(slot, ephX, eph.secretKey);
    // Warm, as a serving daemon's workers are: a fresh worker's JavaScript (key schedule, AEAD
    // glue) runs cold for its first few hundred handshakes.
    for (let i = 0; i < 5; i++) {
      await Promise.all(Array.from({ length: 200 }, () => pool.respond(message, [slot])));
    }
    return pool;
  };
  Deno.bench({
    name: "pool: 100 responder handshakes, one round trip each (pool.respond)",
    group: "pool-handshake",
    baseline: true,
    n: 10,
    warmup: 2,
    fn: async (b) => {
      const pool = await start();
      b.start();
      const rs = await Promise.all(
        Array.from({ length: 100 }, () => pool.respond(message, [slot])),
      );
      b.end();
      if (!rs.every((r) => r.ok)) throw new Error("pool.respond: a handshake did not open");
      await pool.close();
    },
  });
  Deno.bench({
    name: "pool: 100 responder handshakes, two round trips each (decaps only in the worker)",
    group: "pool-handshake",
    n: 10,
    warmup: 2,
    fn: async (b) => {
      const pool = await start();
      b.start();
      await Promise.all(Array.from({ length: 100 }, async () => {
        const ss = await pool.mcelieceDecap(msg.c0);
        const opened = respondOpen(msg, ss, serverX, [{ x25519Sk: ephX, id: slot }]);
        if (!opened) throw new Error("handshake did not open");
        respondFinish(msg, opened, await pool.sntrupDecap(opened.sntrupCt, eph.secretKey));
      }));
      b.end();
      await pool.close();
    },
  });
}
