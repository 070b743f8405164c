// Costs of the sans-IO protocol core: kdf, AEAD, tunnel packets, both handshake sides (with and
// without the KEM work), the KEMs, the key tree and pq1 names.
//
//   deno bench --allow-read=tests/fixtures bench/core_bench.ts
//
// Each group has a baseline, so Deno prints how many times slower the other rows are.
import { kdf } from "../lib/core/kdf.ts";
import { aeadSeal, setAeadBackend } from "../lib/core/aead.ts";
import { aeadBackendFor, installAeadBackend } from "../lib/runtime/aead_backend.ts";
import { openDetached, sealDetached, x25519PublicKey, x25519Shared } from "../lib/core/crypto.ts";
import { TunnelSession } from "../lib/core/session.ts";
import { initiate, parseInitiation, respondFinish, respondOpen } from "../lib/core/handshake.ts";
import { KeyTree } from "../lib/core/keytree.ts";
import { base32Decode, base32Encode } from "../lib/core/base32.ts";
import { formatPq1Label, parsePq1Name } from "../lib/core/names.ts";
import { nativeKemBackend, wasmKemBackend } from "../lib/runtime/kem_backend.ts";

// Everything below but the side-by-side group runs on the backend a daemon would choose.
installAeadBackend();

const FIXTURES = new URL("../tests/fixtures/", import.meta.url);
const fixture = (name: string) => Deno.readFileSync(new URL(name, FIXTURES));
const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));

const PACKET = 1200;
const payload = random(PACKET);
const nonce = new Uint8Array(12);
const ad = random(40); // a tunnel header's worth of associated data

// ---- kdf: one handshake step, a chain step (chain key + 18 packet keys), an epoch start.
const kdfKey = random(32);
const kdfInput = random(32);

Deno.bench({
  name: "kdf(1, k, x)  handshake step",
  group: "kdf",
  baseline: true,
  fn: () => {
    kdf(1, kdfKey, kdfInput);
  },
});

Deno.bench({
  name: "kdf(2, k)     epoch start",
  group: "kdf",
  fn: () => {
    kdf(2, kdfKey);
  },
});

Deno.bench({
  name: "kdf(19, k)    chain step (18 packet keys)",
  group: "kdf",
  fn: () => {
    kdf(19, kdfKey);
  },
});

// ---- AEAD alone, on 1200-byte packets.
const aeadKey = random(32);
const boxed = sealDetached(aeadKey, nonce, payload, ad);
if (!openDetached(aeadKey, nonce, boxed.ciphertext, boxed.tag, ad)) {
  throw new Error("AEAD self-check");
}

// The two AEAD backends side by side (libsodium needs --allow-ffi naming it; without it only
// the JS row runs). Everything else in this file uses whichever backend loads by default.
const sealOut = new Uint8Array(payload.length + 16);
const backendBench = (name: "js" | "libsodium", baseline: boolean) =>
  Deno.bench({
    name: `100 × ChaCha20-Poly1305 seal into a buffer, 1200 B, ${name}`,
    group: "aead-backend",
    baseline,
    fn(b) {
      const previous = setAeadBackend(aeadBackendFor(name));
      b.start();
      for (let i = 0; i < 100; i++) aeadSeal(aeadKey, nonce, ad, payload, sealOut);
      b.end();
      setAeadBackend(previous);
    },
  });
backendBench("js", true);
try {
  aeadBackendFor("libsodium");
  backendBench("libsodium", false);
} catch {
  console.log("core_bench: libsodium not loadable (no --allow-ffi for it): JS backend only");
}

Deno.bench({
  name: "ChaCha20-Poly1305 seal, 1200 B",
  group: "aead",
  baseline: true,
  fn: () => {
    sealDetached(aeadKey, nonce, payload, ad);
  },
});

Deno.bench({
  name: "ChaCha20-Poly1305 open, 1200 B",
  group: "aead",
  fn: () => {
    openDetached(aeadKey, nonce, boxed.ciphertext, boxed.tag, ad);
  },
});

// ---- Tunnel packets: AEAD plus the per-packet key schedule (a kdf(19) chain step every 18
// packets, key bookkeeping and erasure). `now` stays fixed, so no epoch change happens.
function sessionPair(): { a: TunnelSession; b: TunnelSession } {
  const tid = random(32), i2r = random(32), r2i = random(32);
  return {
    a: TunnelSession.create(tid, i2r.slice(), r2i.slice(), 0),
    b: TunnelSession.create(tid, r2i, i2r, 0),
  };
}
const sealer = sessionPair().a;
const pair = sessionPair();
{
  const r = pair.b.openPacket(pair.a.sealPacket(payload, 0), 0);
  if (!r.ok) throw new Error(`session self-check: ${r.reason}`);
}

Deno.bench({
  name: "TunnelSession.seal, 1200 B",
  group: "session",
  baseline: true,
  fn: () => {
    sealer.sealPacket(payload, 1);
  },
});

Deno.bench({
  name: "TunnelSession.open, 1200 B (in order)",
  group: "session",
  fn: (b) => {
    // Keys are one-time: each iteration opens a fresh packet, sealed outside the timing.
    const packet = pair.a.sealPacket(payload, 1);
    b.start();
    const r = pair.b.openPacket(packet, 1);
    b.end();
    if (!r.ok) throw new Error(`open failed: ${r.reason}`);
  },
});

// ---- Handshake. Keys: the reference server's long-term keys; one live ephemeral slot. The KEMs
// are the native ones when --allow-ffi names them (as `deno task bench` does), else WASM; the
// responder's full cost is measured under each backend below.
const wasmKems = await wasmKemBackend();
const nativeKems = nativeKemBackend();
const { mceliece: mc, sntrup: sn } = nativeKems ?? wasmKems;
const mcPk = fixture("mceliece_pk");
const mcSk = fixture("mceliece_sk");
const serverX25519Pk = fixture("x25519_pk");
const serverX25519Sk = fixture("x25519_sk");
const ephX25519Sk = random(32);
const ephX25519Pk = x25519PublicKey(ephX25519Sk);
const eph = sn.keypair();
// Resident keys, as a client keeps a server's McEliece key and a server its own secret key.
const mcEnc = mc.encapsulator(mcPk);
const mcDec = mc.decapsulator(mcSk);
const snDec = sn.decapsulator(eph.secretKey);

const mcResult = mcEnc.encapsulate();
const snResult = sn.encapsulate(eph.publicKey);
const clientSk = random(32);
const precomputed = {
  mcelieceCt: mcResult.ciphertext,
  mcelieceSs: mcResult.sharedSecret,
  clientX25519Sk: clientSk,
  clientX25519Pk: x25519PublicKey(clientSk),
  serverStaticX25519Pk: serverX25519Pk,
  serverEphemeralX25519Pk: ephX25519Pk,
  sntrupCt: snResult.ciphertext,
  sntrupSs: snResult.sharedSecret,
};
const sent = initiate(precomputed);
const slots = [{ x25519Sk: ephX25519Sk, id: 1 }];

/** Client side after the KEMs: fresh X25519 key, initiate, session. */
function clientFinish(mcel: { ciphertext: Uint8Array; sharedSecret: Uint8Array }) {
  const sk = random(32);
  const snt = sn.encapsulate(eph.publicKey);
  const r = initiate({
    mcelieceCt: mcel.ciphertext,
    mcelieceSs: mcel.sharedSecret,
    clientX25519Sk: sk,
    clientX25519Pk: x25519PublicKey(sk),
    serverStaticX25519Pk: serverX25519Pk,
    serverEphemeralX25519Pk: ephX25519Pk,
    sntrupCt: snt.ciphertext,
    sntrupSs: snt.sharedSecret,
  });
  return TunnelSession.create(r.tid, r.i2r, r.r2i, 0);
}

/** Server side: parse, open, finish, session; `mceliece` and `sntrup` decapsulate. */
function serverSide(
  message: Uint8Array,
  mceliece: (c0: Uint8Array) => Uint8Array,
  sntrup: (ct: Uint8Array) => Uint8Array,
) {
  const msg = parseInitiation(message)!;
  const opened = respondOpen(msg, mceliece(msg.c0), serverX25519Sk, slots);
  if (!opened) throw new Error("handshake did not open");
  const r = respondFinish(msg, opened, sntrup(opened.sntrupCt));
  return TunnelSession.create(r.tid, r.r2i, r.i2r, 0);
}

{ // Both sides must agree, with real decapsulation.
  const r = serverSide(sent.message, (c0) => mcDec.decapsulate(c0), (ct) => snDec.decapsulate(ct));
  const c = TunnelSession.create(sent.tid, sent.i2r, sent.r2i, 0);
  if (!r.openPacket(c.sealPacket(payload, 0), 0).ok) throw new Error("handshake self-check");
}

Deno.bench({
  name: "initiate (KEM results precomputed)",
  group: "handshake-client",
  baseline: true,
  fn: () => {
    initiate(precomputed);
  },
});

Deno.bench({
  name: "client: X25519 keygen + sntrup761 enc + initiate + session (McEliece ct cached)",
  group: "handshake-client",
  fn: () => {
    clientFinish(mcResult);
  },
});

Deno.bench({
  name: "client: the same + McEliece enc (resident pk): full cost",
  group: "handshake-client",
  fn: () => {
    clientFinish(mcEnc.encapsulate());
  },
});

Deno.bench({
  name: "respondOpen + respondFinish (decapsulations precomputed)",
  group: "handshake-server",
  baseline: true,
  fn: () => {
    serverSide(sent.message, () => mcResult.sharedSecret, () => snResult.sharedSecret);
  },
});

// The whole responder per KEM backend: McEliece dec with the resident key, sntrup761 dec with the
// slot's key copied in (as the server's worker gets it), then respond and the session.
for (const kems of [nativeKems, wasmKems]) {
  if (!kems) continue;
  const dec = kems.mceliece.decapsulator(mcSk);
  Deno.bench({
    name: `server: full responder handshake, ${kems.name} KEMs (dec + dec + respond + session)`,
    group: "handshake-server",
    fn: () => {
      serverSide(
        sent.message,
        (c0) => dec.decapsulate(c0),
        (ct) => kems.sntrup.decapsulate(ct, eph.secretKey),
      );
    },
  });
}

// The native part of respondOpen: its two X25519s. What is left is the JavaScript part.
const clientPkForDh = x25519PublicKey(random(32));
Deno.bench({
  name: "2 × X25519 (the responder's native DH work)",
  group: "handshake-server",
  fn: () => {
    x25519Shared(serverX25519Sk, clientPkForDh);
    x25519Shared(ephX25519Sk, clientPkForDh);
  },
});

// ---- The KEMs on their own (the backend chosen above).
Deno.bench({
  name: "mceliece6960119 enc (resident pk)",
  group: "kem",
  baseline: true,
  fn: () => {
    mcEnc.encapsulate();
  },
});

Deno.bench({
  name: "mceliece6960119 dec (resident sk)",
  group: "kem",
  fn: () => {
    mcDec.decapsulate(mcResult.ciphertext);
  },
});

Deno.bench({
  name: "sntrup761 keygen",
  group: "kem",
  fn: () => {
    sn.keypair();
  },
});

Deno.bench({
  name: "sntrup761 enc",
  group: "kem",
  fn: () => {
    sn.encapsulate(eph.publicKey);
  },
});

Deno.bench({
  name: "sntrup761 dec (resident sk)",
  group: "kem",
  fn: () => {
    snDec.decapsulate(snResult.ciphertext);
  },
});

// ---- Key tree of the reference server's keys (done once at server start).
Deno.bench({
  name: "KeyTree.build (1 MB McEliece key, 938 nodes)",
  group: "keytree",
  n: 30,
  fn: () => {
    KeyTree.build(mcPk, serverX25519Pk);
  },
});

// ---- Names: what the client does with every DNS name in every answer.
const keyHash = KeyTree.build(mcPk, serverX25519Pk).root;
const label = formatPq1Label(keyHash);
const bare = `www.${label}.example.org`;
const withPorts = `${formatPq1Label(keyHash, { crypto: 42424, key: 42425 })}.example.org`;
const plainName = "www.example.org";
if (parsePq1Name(bare) === null || parsePq1Name(withPorts)?.keyPort !== 42425) {
  throw new Error("name self-check");
}

Deno.bench({
  name: "parsePq1Name, ordinary name (no announcement)",
  group: "names",
  baseline: true,
  fn: () => {
    parsePq1Name(plainName);
  },
});

Deno.bench({
  name: "parsePq1Name, pq1 label",
  group: "names",
  fn: () => {
    parsePq1Name(bare);
  },
});

Deno.bench({
  name: "parsePq1Name, pq1 label with ports",
  group: "names",
  fn: () => {
    parsePq1Name(withPorts);
  },
});

Deno.bench({
  name: "base32Decode, 52 chars (key hash)",
  group: "names",
  fn: () => {
    base32Decode(label.slice(3));
  },
});

Deno.bench({
  name: "base32Encode, 32 bytes",
  group: "names",
  fn: () => {
    base32Encode(keyHash);
  },
});
