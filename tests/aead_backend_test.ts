// The reference vectors of the symmetric layer replayed under each AEAD backend (libsodium
// through FFI and the JS fallback), and the two backends checked against each other, including
// the zero-copy packet paths (seal into a buffer, open in place).

import assert from "node:assert/strict";
import { fixture, fromHex, vectors } from "./fixtures.ts";
import { hex } from "../lib/core/bytes.ts";
import {
  aeadBackend,
  type AeadBackendName,
  aeadOpen,
  aeadOpenPacket,
  aeadSeal,
} from "../lib/core/aead.ts";
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";
import {
  openDetached,
  sealDetached,
  x25519Backend,
  x25519PublicKey,
  x25519Shared,
} from "../lib/core/crypto.ts";
import { initiate, parseInitiation, respondFinish, respondOpen } from "../lib/core/handshake.ts";
import { kdf } from "../lib/core/kdf.ts";
import { TunnelSession } from "../lib/core/session.ts";
import { buildCookie, CookieKeyring, openCookie } from "../lib/core/cookie.ts";
import { sodium } from "../ffi/sodium.ts";

const BACKENDS: AeadBackendName[] = ["libsodium", "js"];
const haveSodium = sodium() !== null;

/** Runs `fn` with `name` as the backend, restoring the automatic choice afterwards. */
function under(name: AeadBackendName, fn: () => void): void {
  assert.equal(installAeadBackend(name), name);
  try {
    fn();
  } finally {
    installAeadBackend("auto");
  }
}

const tv = vectors.tunnel;
type TunnelVector = { plain: string; wire: string; epoch: number; ctr: number };
const timeOf = (i: number) => (i < 40 ? 1 : 61); // 40 packets in epoch 0, then epoch 2

for (const name of BACKENDS) {
  const ignore = name === "libsodium" && !haveSodium;

  Deno.test(
    { name: `[${name}] stream kdf vectors, 64-bit counter carries and wrap`, ignore },
    () =>
      under(name, () => {
        for (const t of vectors.stream_kdf) {
          const out = kdf(t.n, fromHex(t.key), t.input ? fromHex(t.input) : undefined).map(hex);
          assert.deepEqual(out, t.out);
        }
      }),
  );

  Deno.test(
    { name: `[${name}] aead vectors, detached and in place`, ignore },
    () =>
      under(name, () => {
        for (const t of vectors.aead) {
          const key = fromHex(t.key), nonce = fromHex(t.nonce), ad = fromHex(t.ad);
          const s = sealDetached(key, nonce, fromHex(t.msg), ad);
          assert.equal(hex(s.ciphertext), t.ct);
          assert.equal(hex(s.tag), t.tag);
          assert.equal(hex(openDetached(key, nonce, fromHex(t.ct), fromHex(t.tag), ad)!), t.msg);
          // in place: plaintext at the start of the output buffer
          const msg = fromHex(t.msg);
          const buf = new Uint8Array(msg.length + 16);
          buf.set(msg);
          aeadSeal(key, nonce, ad, buf.subarray(0, msg.length), buf);
          assert.equal(hex(buf), t.ct + t.tag);
          assert.ok(aeadOpen(key, nonce, ad, buf, buf.subarray(0, msg.length)));
          assert.equal(hex(buf.subarray(0, msg.length)), t.msg);
          const bad = fromHex(t.ct + t.tag);
          bad[bad.length - 1] ^= 1;
          assert.equal(aeadOpen(key, nonce, ad, bad, bad.subarray(0, msg.length)), false);
          // a whole packet, ad || ciphertext || tag, opened where it lies inside a larger buffer
          const room = new Uint8Array(7 + ad.length + msg.length + 16 + 5);
          const packet = room.subarray(7, 7 + ad.length + msg.length + 16);
          packet.set(ad);
          packet.set(fromHex(t.ct + t.tag), ad.length);
          const out = packet.subarray(ad.length, ad.length + msg.length);
          assert.ok(aeadOpenPacket(key, nonce, packet, ad.length, out));
          assert.equal(hex(out), t.msg);
          assert.equal(hex(packet.subarray(0, ad.length)), hex(ad), "the header stays");
          for (const at of [0, ad.length, packet.length - 1]) { // ad, ciphertext, tag
            if (at >= packet.length || (at === 0 && ad.length === 0)) continue;
            const forged = packet.slice();
            forged.set(fromHex(t.ct + t.tag), ad.length);
            forged[at] ^= 1;
            const view = forged.subarray(ad.length, ad.length + msg.length);
            assert.equal(aeadOpenPacket(key, nonce, forged, ad.length, view), false, `byte ${at}`);
          }
          // `out` must be the packet's own ciphertext view: anything else is refused loudly
          assert.throws(() => aeadOpenPacket(key, nonce, packet, ad.length, msg.slice()));
          assert.throws(() =>
            aeadOpenPacket(key, nonce, packet, ad.length, packet.subarray(ad.length + 1))
          );
          assert.equal(aeadOpenPacket(key, nonce, packet.subarray(0, 15), 0, out), false);
        }
      }),
  );

  Deno.test(
    { name: `[${name}] tunnel vectors: sealPacket, sealPacketInto and openPacketInPlace`, ignore },
    () =>
      under(name, () => {
        const tid = fromHex(tv.tid);
        const send = fromHex(tv.initiator_send_root), recv = fromHex(tv.initiator_recv_root);
        const a = TunnelSession.create(tid, send.slice(), recv.slice(), 0);
        const b = TunnelSession.create(tid, send.slice(), recv.slice(), 0);
        const slot = new Uint8Array(2048);
        tv.initiator_packets.forEach((p: TunnelVector, i: number) => {
          assert.equal(hex(a.sealPacket(fromHex(p.plain), timeOf(i))), p.wire, `seal ${i}`);
          const n = b.sealPacketInto(fromHex(p.plain), slot, timeOf(i));
          assert.equal(hex(slot.subarray(0, n)), p.wire, `sealPacketInto ${i}`);
        });
        const responder = TunnelSession.create(tid, recv.slice(), send.slice(), 0);
        tv.initiator_packets.forEach((p: TunnelVector, i: number) => {
          const wire = fromHex(p.wire);
          const r = responder.openPacketInPlace(wire, timeOf(i));
          assert.ok(r.ok, `packet ${i}: ${!r.ok && r.reason}`);
          assert.equal(hex(r.plaintext), p.plain);
          assert.equal(r.plaintext.buffer, wire.buffer, "decrypted where it lay");
          assert.equal([r.epoch, r.ctr].join(), [p.epoch, p.ctr].join());
        });
        for (const p of tv.responder_packets) {
          assert.equal(hex(responder.sealPacket(fromHex(p.plain), 61, slot)), p.wire);
        }
      }),
  );

  Deno.test({ name: `[${name}] cookie vector`, ignore }, () =>
    under(name, () => {
      const cv = vectors.cookie;
      const ring = new CookieKeyring(fromHex(cv.master_key), fromHex(cv.seed));
      ring.update(cv.timestamp, fromHex(cv.randomness));
      const issued = ring.issue(cv.timestamp)!;
      const cookie = buildCookie(issued.key, issued.nonce, issued.timestamp, {
        tid: fromHex(cv.tid),
        epoch: cv.epoch,
        sendRoot: fromHex(cv.send_root),
        recvRoot: fromHex(cv.recv_root),
      });
      assert.equal(hex(cookie), cv.cookie);
      assert.equal(hex(openCookie(issued.key, cookie)!.recvRoot), cv.recv_root);
    }));

  Deno.test(
    { name: `[${name}] a forged packet opened in place changes no state`, ignore },
    () =>
      under(name, () => {
        const tid = crypto.getRandomValues(new Uint8Array(32));
        const x = crypto.getRandomValues(new Uint8Array(32));
        const y = crypto.getRandomValues(new Uint8Array(32));
        const a = TunnelSession.create(tid, x.slice(), y.slice(), 0);
        const b = TunnelSession.create(tid, y.slice(), x.slice(), 0);
        const genuine = a.sealPacket(new Uint8Array(100).fill(7), 1);
        const forged = genuine.slice();
        forged[60] ^= 1;
        assert.deepEqual(b.openPacketInPlace(forged, 1), { ok: false, reason: "auth" });
        const r = b.openPacketInPlace(genuine.slice(), 1);
        assert.ok(r.ok);
        assert.deepEqual([...r.plaintext], new Array(100).fill(7));
        assert.deepEqual(b.openPacketInPlace(genuine.slice(), 1), { ok: false, reason: "no-key" });
      }),
  );

  Deno.test(
    {
      name: `[${name}] X25519 vector, low-order points refused, handshake vector both ways`,
      ignore,
    },
    () =>
      under(name, () => {
        assert.equal(x25519Backend(), name);
        const t = vectors.x25519;
        assert.equal(hex(x25519PublicKey(fromHex(t.sk))), t.pk);
        assert.equal(hex(x25519Shared(fromHex(t.sk), fromHex(t.peer_pk))), t.shared);
        // The all-zero point and the order-2 point (1) give an all-zero secret: refused.
        const one = new Uint8Array(32);
        one[0] = 1;
        for (const p of [new Uint8Array(32), one]) {
          assert.throws(() => x25519Shared(fromHex(t.sk), p), /low-order/);
        }
        const hv = vectors.handshake;
        const c = hv.client;
        const sent = initiate({
          mcelieceCt: fromHex(c.mceliece_ct),
          mcelieceSs: fromHex(c.mceliece_ss),
          clientX25519Sk: fromHex(c.x25519_eph_sk),
          clientX25519Pk: fromHex(c.x25519_eph_pk),
          serverStaticX25519Pk: fixture("x25519_pk"),
          serverEphemeralX25519Pk: fromHex(hv.server_ephemeral.x25519_pk),
          sntrupCt: fromHex(c.sntrup_ct),
          sntrupSs: fromHex(c.sntrup_ss),
        });
        assert.equal(hex(sent.message), hv.message);
        const msg = parseInitiation(fromHex(hv.message))!;
        const slots = [{ x25519Sk: fromHex(hv.server_ephemeral.x25519_sk), id: 5 }];
        const pending = respondOpen(msg, fromHex(c.mceliece_ss), fixture("x25519_sk"), slots);
        assert.ok(pending);
        const r = respondFinish(msg, pending, fromHex(c.sntrup_ss));
        assert.equal(hex(r.tid), hv.tid);
      }),
  );
}

Deno.test({ name: "libsodium and JS agree on random inputs", ignore: !haveSodium }, () => {
  const rnd = (n: number) => crypto.getRandomValues(new Uint8Array(n));
  // Block counters around the 32-bit and 64-bit carries, with lengths that end mid-block.
  const counters = ["ffffffff00000000", "feffffffffffffff", "fdffffff00000000", "0000000000000000"];
  for (let i = 0; i < 40; i++) {
    const key = rnd(32), ad = rnd(i % 50), msg = rnd((i * 97) % 1600), nonce = rnd(12);
    const x = rnd(32);
    x.set(fromHex(counters[i % counters.length]), 0);
    x.set(fromHex(counters[(i + 1) % counters.length]), 16);
    const outs = BACKENDS.map((b) => {
      installAeadBackend(b);
      const sealed = new Uint8Array(msg.length + 16);
      aeadSeal(key, nonce, ad, msg, sealed);
      return hex(sealed) + "/" + kdf(1 + (i % 20), key, x).map(hex).join("") + "/" +
        kdf(3, key).map(hex).join("");
    });
    assert.equal(outs[0], outs[1], `case ${i}`);
  }
  installAeadBackend("auto");
  assert.equal(aeadBackend(), "libsodium", "libsodium is the default when it loads");
});
