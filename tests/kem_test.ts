// KEM adapter tests against the reference's own keys and ciphertexts (libmceliece /
// libntruprime via PQConnect 1.2.2), under both backends: liboqs's WebAssembly build and the
// native libraries through FFI. CI installs the native libraries (scripts/ensure-deps.sh), so
// their absence fails here rather than passing quietly on the fallback.
// Needs --allow-read for tests/fixtures and --allow-ffi for the native libraries.
import assert from "node:assert/strict";
import { type Kem, KemRejectedError, loadMcEliece6960119, loadSntrup761 } from "../wasm/kem.ts";
import {
  type KemBackend,
  loadKemBackend,
  nativeKemBackend,
  wasmKemBackend,
} from "../lib/runtime/kem_backend.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);

function fixture(name: string): Uint8Array {
  return Deno.readFileSync(new URL(name, FIXTURES));
}

function hex(s: string): Uint8Array {
  assert.equal(s.length % 2, 0);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

interface DecapsCase {
  ct: string;
  ss: string;
}
interface Vectors {
  kem_decaps: Record<string, { sk_file: string; pk_file: string; cases: DecapsCase[] }>;
  sizes: Record<string, { pk: number; sk: number; ct: number; ss: number }>;
  handshake: {
    server_ephemeral: { sntrup761_sk_file: string };
    client: { mceliece_ct: string; mceliece_ss: string; sntrup_ct: string; sntrup_ss: string };
  };
}

const vectors: Vectors = JSON.parse(
  new TextDecoder().decode(fixture("reference-vectors.json")),
);

function flipBit(ct: Uint8Array, bit: number): Uint8Array {
  const out = ct.slice();
  out[bit >> 3] ^= 1 << (bit & 7);
  return out;
}

/**
 * Structural checks on a McEliece 6960119 key pair, enough to tell that two implementations
 * use the same serialisation: sk = delta(32) || c(8) || g(2*119) || control bits || s(870), with
 * c all-ones in the low 32 bits for the non-"f" variant and g holding 13-bit field elements;
 * pk = 1547 rows of 677 bytes whose last byte carries only 5413 mod 8 = 5 bits.
 */
function assertMcElieceKeyFormat(pk: Uint8Array, sk: Uint8Array): void {
  assert.equal(pk.length, 1047319);
  assert.equal(sk.length, 13948);
  assert.deepEqual(Array.from(sk.subarray(32, 40)), [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
  for (let i = 0; i < 119; i++) {
    const coeff = sk[40 + 2 * i] | (sk[41 + 2 * i] << 8);
    assert.ok(coeff < 8192, `g coefficient ${i} is not a GF(2^13) element`);
  }
  for (let row = 0; row < 1547; row++) {
    assert.equal(pk[row * 677 + 676] >> 5, 0, `pk row ${row} has bits past column 5413`);
  }
}

Deno.test("sizes match the reference's", async () => {
  const mc = await loadMcEliece6960119();
  const sn = await loadSntrup761();
  for (const [kem, ref] of [[mc, vectors.sizes.mceliece6960119], [sn, vectors.sizes.sntrup761]]) {
    const k = kem as Kem;
    const r = ref as Vectors["sizes"][string];
    assert.deepEqual(
      [k.publicKeyBytes, k.secretKeyBytes, k.ciphertextBytes, k.sharedSecretBytes],
      [r.pk, r.sk, r.ct, r.ss],
    );
  }
  assert.equal(mc.name, "mceliece6960119");
  assert.equal(sn.name, "sntrup761");
});

Deno.test("loaders are memoized", async () => {
  const [a, b] = await Promise.all([loadMcEliece6960119(), loadMcEliece6960119()]);
  assert.equal(a, b);
  assert.equal(await loadSntrup761(), await loadSntrup761());
});

function native(): KemBackend {
  const b = nativeKemBackend();
  assert.ok(b, "libmceliece/libntruprime must load (scripts/ensure-deps.sh installs them)");
  return b;
}

const BACKENDS: [string, () => Promise<KemBackend>][] = [
  ["wasm", wasmKemBackend],
  ["native", () => Promise.resolve(native())],
];

const KEMS: [string, () => Promise<Kem>][] = [];
for (const [backend, load] of BACKENDS) {
  KEMS.push([`${backend} mceliece6960119`, async () => (await load()).mceliece]);
  KEMS.push([`${backend} sntrup761`, async () => (await load()).sntrup]);
}

Deno.test("the backends load as chosen, auto prefers native", async () => {
  assert.equal((await loadKemBackend("wasm")).name, "wasm");
  assert.equal((await loadKemBackend("native")).name, "native");
  assert.equal((await loadKemBackend("auto")).name, "native");
});

Deno.test("native sizes match the reference's", () => {
  const b = native();
  for (const k of [b.mceliece, b.sntrup]) {
    const r = vectors.sizes[k.name];
    assert.deepEqual(
      [k.publicKeyBytes, k.secretKeyBytes, k.ciphertextBytes, k.sharedSecretBytes],
      [r.pk, r.sk, r.ct, r.ss],
    );
  }
});

Deno.test("each backend decapsulates the other's ciphertexts", async () => {
  const w = await wasmKemBackend();
  const n = native();
  for (const pick of [(b: KemBackend) => b.mceliece, (b: KemBackend) => b.sntrup]) {
    const section = vectors.kem_decaps[pick(w).name];
    const pk = fixture(section.pk_file);
    const sk = fixture(section.sk_file);
    for (const [from, to] of [[w, n], [n, w]]) {
      for (let i = 0; i < 3; i++) {
        const e = pick(from).encapsulate(pk);
        assert.deepEqual(pick(to).decapsulate(e.ciphertext, sk), e.sharedSecret);
      }
    }
  }
  // Ephemeral sntrup761 keys made by one open ciphertexts made by the other.
  for (const [from, to] of [[w, n], [n, w]]) {
    const kp = from.sntrup.keypair();
    const e = to.sntrup.encapsulate(kp.publicKey);
    assert.deepEqual(from.sntrup.decapsulate(e.ciphertext, kp.secretKey), e.sharedSecret);
  }
});

for (const [label, load] of KEMS) {
  const alg = label.split(" ")[1];
  Deno.test(`${label}: reference kem_decaps vectors decapsulate exactly`, async () => {
    const kem = await load();
    const section = vectors.kem_decaps[alg];
    const sk = fixture(section.sk_file);
    assert.ok(section.cases.length >= 3);
    for (const c of section.cases) {
      assert.deepEqual(kem.decapsulate(hex(c.ct), sk), hex(c.ss));
    }
    using dec = kem.decapsulator(sk);
    for (const c of section.cases) {
      assert.deepEqual(dec.decapsulate(hex(c.ct)), hex(c.ss));
    }
  });

  Deno.test(`${label}: encapsulation to the reference public key opens with its secret key`, async () => {
    const kem = await load();
    const section = vectors.kem_decaps[alg];
    const pk = fixture(section.pk_file);
    using dec = kem.decapsulator(fixture(section.sk_file));
    using enc = kem.encapsulator(pk);
    const seen = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const e = i === 0 ? kem.encapsulate(pk) : enc.encapsulate();
      assert.equal(e.ciphertext.length, kem.ciphertextBytes);
      assert.equal(e.sharedSecret.length, kem.sharedSecretBytes);
      assert.deepEqual(dec.decapsulate(e.ciphertext), e.sharedSecret);
      seen.add(e.ciphertext.join(","));
    }
    assert.equal(seen.size, 5, "encapsulation must be randomized");
  });

  Deno.test(`${label}: corrupted ciphertext gives an implicit-rejection secret, not an error`, async () => {
    const kem = await load();
    const section = vectors.kem_decaps[alg];
    const sk = fixture(section.sk_file);
    const ct = hex(section.cases[0].ct);
    const real = hex(section.cases[0].ss);
    using dec = kem.decapsulator(sk);
    const outputs = new Set<string>();
    // mceliece6960119's syndrome is 1547 bits, so bits 1547..1551 are padding (tested apart).
    const last = alg === "mceliece6960119" ? 1546 : ct.length * 8 - 1;
    for (const bit of [0, 7, 100, last]) {
      const bad = flipBit(ct, bit);
      const ss = dec.decapsulate(bad);
      assert.equal(ss.length, 32);
      assert.notDeepEqual(ss, real);
      // Implicit rejection is a deterministic function of (sk, ct): same input, same output.
      assert.deepEqual(dec.decapsulate(bad), ss);
      outputs.add(ss.join(","));
    }
    assert.equal(outputs.size, 4, "distinct bad ciphertexts must give unrelated secrets");
    // The real ciphertext still works after the rejections.
    assert.deepEqual(dec.decapsulate(ct), real);
  });

  Deno.test(`${label}: invalid inputs are rejected with clear errors`, async () => {
    const kem = await load();
    const section = vectors.kem_decaps[alg];
    const sk = fixture(section.sk_file);
    const pk = fixture(section.pk_file);
    const ct = hex(section.cases[0].ct);
    const short = (b: Uint8Array) => b.subarray(0, b.length - 1);
    const long = (b: Uint8Array) => {
      const o = new Uint8Array(b.length + 1);
      o.set(b);
      return o;
    };
    const bad = (what: string, n: number) => (e: unknown) =>
      e instanceof RangeError &&
      new RegExp(`^${alg}: ${what} must be ${n} bytes, got \\d+$`).test(e.message);
    assert.throws(() => kem.decapsulate(short(ct), sk), RangeError);
    assert.throws(() => kem.decapsulate(long(ct), sk), bad("ciphertext", kem.ciphertextBytes));
    assert.throws(() => kem.decapsulate(ct, short(sk)), bad("secret key", kem.secretKeyBytes));
    assert.throws(() => kem.decapsulate(ct, long(sk)), RangeError);
    assert.throws(() => kem.encapsulate(short(pk)), bad("public key", kem.publicKeyBytes));
    assert.throws(() => kem.encapsulate(new Uint8Array(0)), RangeError);
    assert.throws(() => kem.encapsulator(long(pk)), RangeError);
    assert.throws(() => kem.decapsulator(short(sk)), RangeError);
    assert.throws(
      () => kem.decapsulate(Array.from(ct) as unknown as Uint8Array, sk),
      (e: unknown) => e instanceof TypeError && /ciphertext must be a Uint8Array/.test(e.message),
    );
    using dec = kem.decapsulator(sk);
    assert.throws(() => dec.decapsulate(short(ct)), bad("ciphertext", kem.ciphertextBytes));
    // A rejected call must not have disturbed the resident key.
    assert.deepEqual(dec.decapsulate(ct), hex(section.cases[0].ss));
  });

  Deno.test(`${label}: resident keys refuse use after dispose`, async () => {
    const kem = await load();
    const section = vectors.kem_decaps[alg];
    const dec = kem.decapsulator(fixture(section.sk_file));
    const enc = kem.encapsulator(fixture(section.pk_file));
    dec.dispose();
    enc.dispose();
    dec.dispose(); // idempotent
    enc[Symbol.dispose]();
    assert.throws(() => dec.decapsulate(hex(section.cases[0].ct)), /used after dispose/);
    assert.throws(() => enc.encapsulate(), /used after dispose/);
  });
}

for (const [backend, load] of BACKENDS) {
  Deno.test(`${backend} mceliece6960119: padding bits set are an explicit rejection, never a key`, async () => {
    const mc = (await load()).mceliece;
    const section = vectors.kem_decaps.mceliece6960119;
    const ct = hex(section.cases[0].ct);
    using dec = mc.decapsulator(fixture(section.sk_file));
    for (let bit = 1547; bit < 1552; bit++) {
      assert.throws(() => dec.decapsulate(flipBit(ct, bit)), KemRejectedError);
    }
    assert.deepEqual(dec.decapsulate(ct), hex(section.cases[0].ss));

    // Likewise a public key with a bit set past column 5413 of a row (last byte of row 0).
    const pk = fixture(section.pk_file);
    pk[676] |= 0x80;
    assert.throws(() => mc.encapsulate(pk), /public key rejected/);
    using enc = mc.encapsulator(pk);
    assert.throws(() => enc.encapsulate(), KemRejectedError);
  });

  Deno.test(`${backend}: handshake vector: server-side decapsulations reproduce the client's secrets`, async () => {
    const { mceliece: mc, sntrup: sn } = await load();
    const c = vectors.handshake.client;
    assert.deepEqual(
      mc.decapsulate(hex(c.mceliece_ct), fixture("mceliece_sk")),
      hex(c.mceliece_ss),
    );
    const esk = fixture(vectors.handshake.server_ephemeral.sntrup761_sk_file);
    assert.deepEqual(sn.decapsulate(hex(c.sntrup_ct), esk), hex(c.sntrup_ss));
  });
}

Deno.test("mceliece6960119: reference key files have the expected serialisation", () => {
  assertMcElieceKeyFormat(fixture("mceliece_pk"), fixture("mceliece_sk"));
});

Deno.test("sntrup761: fresh key pairs interoperate", async () => {
  const sn = await loadSntrup761();
  for (let i = 0; i < 20; i++) {
    const { publicKey, secretKey } = sn.keypair();
    assert.equal(publicKey.length, 1158);
    assert.equal(secretKey.length, 1763);
    const e = sn.encapsulate(publicKey);
    assert.deepEqual(sn.decapsulate(e.ciphertext, secretKey), e.sharedSecret);
  }
});

Deno.test({
  name: "mceliece6960119: a fresh liboqs key pair has the reference format and interoperates",
  fn: async () => {
    // Key generation takes seconds in WASM and its time varies (rejection sampling).
    const mc = await loadMcEliece6960119();
    const t0 = performance.now();
    const { publicKey, secretKey } = mc.keypair();
    const ms = performance.now() - t0;
    console.log(`      mceliece6960119 keypair: ${(ms / 1000).toFixed(2)} s`);
    assertMcElieceKeyFormat(publicKey, secretKey);
    assert.notDeepEqual(publicKey.subarray(0, 64), fixture("mceliece_pk").subarray(0, 64));

    using enc = mc.encapsulator(publicKey);
    using dec = mc.decapsulator(secretKey);
    for (let i = 0; i < 3; i++) {
      const e = enc.encapsulate();
      assert.deepEqual(dec.decapsulate(e.ciphertext), e.sharedSecret);
      assert.deepEqual(mc.decapsulate(e.ciphertext, secretKey), e.sharedSecret);
    }
    // The reference's secret key must not open ciphertexts made for the new key.
    const e = enc.encapsulate();
    assert.notDeepEqual(mc.decapsulate(e.ciphertext, fixture("mceliece_sk")), e.sharedSecret);
  },
});

Deno.test("mceliece6960119: a fresh native key pair has the reference format and opens WASM ciphertexts", async () => {
  const n = native().mceliece;
  const w = (await wasmKemBackend()).mceliece;
  const { publicKey, secretKey } = n.keypair();
  assertMcElieceKeyFormat(publicKey, secretKey);
  using dec = n.decapsulator(secretKey);
  for (let i = 0; i < 3; i++) {
    const e = w.encapsulate(publicKey);
    assert.deepEqual(dec.decapsulate(e.ciphertext), e.sharedSecret);
  }
  secretKey.fill(0);
});
