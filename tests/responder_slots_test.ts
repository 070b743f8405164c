// Which ephemeral slot the responder tries first. Each slot tried costs an X25519 (plus a kdf and
// an AEAD open); a crypto worker tries the slot that opened its last handshake first, so clients
// that all hold the slot before the newest (for a while after each rotation) cost one X25519 less
// each. The order changes the work, never the outcome.

import assert from "node:assert/strict";
import { fixture } from "./fixtures.ts";
import { parseInitiation } from "../lib/core/handshake.ts";
import { makeInitiation } from "./helpers/initiations.ts";
import { preferSlot, respondInitiation } from "../lib/core/responder.ts";
import { loadKemBackend } from "../lib/runtime/kem_backend.ts";
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";
import { setX25519Backend, type X25519Backend, x25519PublicKey } from "../lib/core/crypto.ts";

Deno.test("preferSlot: the preferred slot first, the others in their order; unknown: unchanged", () => {
  const slots = [{ id: 90 }, { id: 60 }, { id: 30 }];
  assert.deepEqual(preferSlot(slots, 30).map((s) => s.id), [30, 90, 60]);
  assert.deepEqual(preferSlot(slots, 60).map((s) => s.id), [60, 90, 30]);
  assert.equal(preferSlot(slots, 90), slots, "already first: the same list");
  assert.equal(preferSlot(slots, -1), slots, "none yet: the same list");
  assert.equal(preferSlot(slots, 120), slots, "a slot gone: the same list");
});

Deno.test("responder: the older slot tried first costs one X25519 less, same roots", async () => {
  installAeadBackend();
  const kems = await loadKemBackend("auto");
  const dec = kems.mceliece.decapsulator(fixture("mceliece_sk"));
  const enc = kems.mceliece.encapsulator(fixture("mceliece_pk"));
  const older = {
    id: 30,
    kp: kems.sntrup.keypair(),
    x: crypto.getRandomValues(new Uint8Array(32)),
  };
  const newer = {
    id: 60,
    kp: kems.sntrup.keypair(),
    x: crypto.getRandomValues(new Uint8Array(32)),
  };
  // A client that fetched its keys before the rotation: the older slot's.
  const made = makeInitiation(enc, kems.sntrup, {
    x25519Pk: fixture("x25519_pk"),
    ephemeralX25519Pk: x25519PublicKey(older.x),
    ephemeralSntrupPk: older.kp.publicKey,
  });
  const slots = [newer, older].map((s) => ({ x25519Sk: s.x, id: s.id }));
  const responderKems = {
    mcelieceDecap: (c0: Uint8Array) => dec.decapsulate(c0),
    sntrupDecap: (ct: Uint8Array, slot: number) => {
      const s = slot === older.id ? older : slot === newer.id ? newer : null;
      return s ? kems.sntrup.decapsulate(ct, s.kp.secretKey) : null;
    },
  };
  const counted = (order: typeof slots) => {
    let calls = 0;
    // The wrapper reaches the backend it replaced, which setX25519Backend hands back.
    const previous: X25519Backend = setX25519Backend({
      name: "counting",
      publicKey: (sk) => previous.publicKey(sk),
      shared: (sk, pk) => {
        calls++;
        return previous.shared(sk, pk);
      },
    });
    try {
      const msg = parseInitiation(made.message.slice())!;
      const r = respondInitiation(msg, responderKems, fixture("x25519_sk"), order);
      return { r, calls };
    } finally {
      setX25519Backend(previous);
    }
  };
  const newestFirst = counted(slots);
  const preferred = counted(preferSlot(slots, older.id));
  assert.equal(newestFirst.r.ok, true);
  assert.equal(preferred.r.ok, true);
  assert.equal(newestFirst.calls, 3, "static, the newer slot, the older slot");
  assert.equal(preferred.calls, 2, "static, the older slot");
  if (newestFirst.r.ok && preferred.r.ok) {
    assert.equal(newestFirst.r.slot, older.id);
    assert.equal(preferred.r.slot, older.id);
    assert.deepEqual(preferred.r.tid, made.tid);
    assert.deepEqual(preferred.r.i2r, made.i2r);
    assert.deepEqual(preferred.r.r2i, made.r2i);
    assert.deepEqual(newestFirst.r.tid, preferred.r.tid);
  }
  dec.dispose();
  enc.dispose();
});
