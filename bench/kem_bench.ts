// KEM costs over liboqs-js WASM. Run: deno bench --allow-read bench/kem_bench.ts
// (reads tests/fixtures and loads the worker modules for the pool benchmark).
import { loadMcEliece6960119, loadSntrup761 } from "../wasm/kem.ts";
import { CryptoPool } from "../lib/runtime/crypto_pool.ts";

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
