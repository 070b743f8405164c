// Every section of the reference vectors, replayed byte for byte.

import assert from "node:assert/strict";
import { fixture, fromHex, vectors } from "./fixtures.ts";
import { hex } from "../lib/core/bytes.ts";
import { kdf } from "../lib/core/kdf.ts";
import {
  h,
  openDetached,
  sealDetached,
  x25519PublicKey,
  x25519Shared,
} from "../lib/core/crypto.ts";
import { base32Decode, base32Encode } from "../lib/core/base32.ts";
import { formatPq1Label, parsePq1Name } from "../lib/core/names.ts";
import { KeyTree, KeyTreeAssembler, nodeLength, TREE_SHAPE } from "../lib/core/keytree.ts";
import {
  ephemeralKeyRequest,
  ephemeralKeyResponse,
  parseKeyRequest,
  parseKeyResponse,
  staticKeyRequest,
  staticKeyResponse,
} from "../lib/core/keymsg.ts";
import { initiate, parseInitiation, respondFinish, respondOpen } from "../lib/core/handshake.ts";
import { TunnelSession } from "../lib/core/session.ts";
import { buildCookie, CookieKeyring, openCookie } from "../lib/core/cookie.ts";

Deno.test("stream_kdf, including 64-bit counter carries and wrap at 2^64", () => {
  for (const t of vectors.stream_kdf) {
    const out = kdf(t.n, fromHex(t.key), t.input ? fromHex(t.input) : undefined).map(hex);
    assert.deepEqual(out, t.out, `kdf(${t.n}, key, ${t.input || "-"})`);
  }
});

Deno.test("h is SHAKE256 with 32 bytes out", () => {
  for (const t of vectors.h) assert.equal(hex(h(fromHex(t.in))), t.out);
});

Deno.test("aead: IETF ChaCha20-Poly1305, detached tag, both ways", () => {
  for (const t of vectors.aead) {
    const key = fromHex(t.key), nonce = fromHex(t.nonce), ad = fromHex(t.ad);
    const s = sealDetached(key, nonce, fromHex(t.msg), ad);
    assert.equal(hex(s.ciphertext), t.ct);
    assert.equal(hex(s.tag), t.tag);
    const p = openDetached(key, nonce, fromHex(t.ct), fromHex(t.tag), ad);
    assert.equal(p && hex(p), t.msg);
    const badTag = fromHex(t.tag);
    badTag[0] ^= 1;
    assert.equal(openDetached(key, nonce, fromHex(t.ct), badTag, ad), null);
  }
});

Deno.test("x25519", () => {
  const t = vectors.x25519;
  assert.equal(hex(x25519PublicKey(fromHex(t.sk))), t.pk);
  assert.equal(hex(x25519Shared(fromHex(t.sk), fromHex(t.peer_pk))), t.shared);
});

Deno.test("base32 (DNSCurve) both ways", () => {
  for (const t of vectors.base32) {
    assert.equal(base32Encode(fromHex(t.bytes)), t.text);
    assert.equal(hex(base32Decode(t.text)!), t.bytes);
    assert.equal(hex(base32Decode(t.text.toUpperCase())!), t.bytes);
  }
  assert.equal(base32Decode("a"), null, "outside the alphabet");
  assert.equal(base32Decode("zz"), null, "value does not fit in one byte");
});

Deno.test("pq1 names parse as the reference does", () => {
  for (const t of vectors.pq1_names) {
    const r = parsePq1Name(t.name);
    const got = r === null
      ? []
      : r.cryptoPort === undefined
      ? [hex(r.keyHash)]
      : [hex(r.keyHash), r.cryptoPort, r.keyPort];
    assert.deepEqual(got, t.result, t.name);
  }
  const withPorts = vectors.pq1_names[2];
  const label = formatPq1Label(fromHex(withPorts.result[0]), { crypto: 42424, key: 42425 });
  assert.equal(withPorts.name.split(".")[0], label);
});

const mceliecePk = fixture("mceliece_pk");
const x25519Pk = fixture("x25519_pk");
const tree = KeyTree.build(mceliecePk, x25519Pk);

Deno.test("key tree: shape, root, nodes and lengths", () => {
  const t = vectors.key_tree;
  assert.deepEqual([...TREE_SHAPE], [0, 1, 2, 3].map((d) => t.structure[d]));
  assert.equal(hex(tree.root), t.root);
  assert.equal(formatPq1Label(tree.root), "pq1" + t.root_base32);
  assert.equal(hex(tree.node(1, 0)!), t.node_1_0);
  assert.equal(hex(tree.node(2, 0)!), t.node_2_0);
  assert.equal(hex(tree.node(2, 25)!), t.node_2_last);
  assert.equal(hex(tree.node(3, 909)!), t.node_3_last);
  assert.equal(hex(h(tree.node(3, 0)!)), t.node_3_0_sha);
  for (const [where, len] of Object.entries(t.node_lengths)) {
    const [d, p] = where.split(",").map(Number);
    assert.equal(tree.node(d, p)!.length, len);
    assert.equal(nodeLength(d, p), len);
  }
  assert.equal(tree.node(4, 0), null);
  assert.equal(tree.node(3, 910), null);
});

Deno.test("key tree: reassembly verifies every node and rejects forgeries", () => {
  const asm = new KeyTreeAssembler(tree.root);
  const forged = tree.node(2, 3)!.slice();
  forged[0] ^= 1;
  assert.equal(asm.accept(2, 3, tree.node(2, 3)!), false, "parent not yet verified");
  assert.equal(asm.accept(1, 0, tree.node(1, 0)!), true);
  assert.equal(asm.accept(1, 0, tree.node(1, 0)!), false, "duplicate");
  assert.equal(asm.accept(2, 3, forged), false, "forged node");
  for (let j = 0; j < TREE_SHAPE[2]; j++) assert.equal(asm.accept(2, j, tree.node(2, j)!), true);
  assert.equal(asm.accept(3, 5, tree.node(3, 6)!), false, "node at the wrong position");
  for (let i = TREE_SHAPE[3] - 1; i >= 0; i--) assert.ok(asm.accept(3, i, tree.node(3, i)!));
  assert.ok(asm.complete);
  const keys = asm.keys();
  assert.deepEqual(keys.mceliecePk, mceliecePk);
  assert.deepEqual(keys.x25519Pk, x25519Pk);
});

Deno.test("key server messages: exact requests, same-length responses", () => {
  for (const t of vectors.key_messages.static) {
    const depth = Number(t.depth), pos = Number(t.pos);
    const req = staticKeyRequest(depth, pos);
    assert.equal(hex(req), t.request);
    assert.deepEqual(parseKeyRequest(req), { kind: "static", depth, pos });
    const resp = staticKeyResponse(depth, pos, tree.node(depth, pos)!);
    assert.equal(resp.length, Number(t.response_len));
    assert.equal(resp.length, req.length);
    assert.equal(hex(resp.subarray(0, 8)), t.response_prefix);
    assert.equal(hex(h(resp)), t.response_sha);
    const parsed = parseKeyResponse(resp);
    assert.ok(parsed && parsed.kind === "static");
    assert.deepEqual(parsed.node, tree.node(depth, pos));
  }
  const ereq = ephemeralKeyRequest();
  assert.equal(hex(ereq), vectors.key_messages.ephemeral_request);
  assert.equal(ereq.length, 1196);
  assert.deepEqual(parseKeyRequest(ereq), { kind: "ephemeral" });
  const eph = vectors.handshake.server_ephemeral;
  const eresp = ephemeralKeyResponse(fromHex(eph.sntrup761_pk), fromHex(eph.x25519_pk));
  assert.equal(hex(eresp), vectors.key_messages.ephemeral_response);
  const parsed = parseKeyResponse(eresp);
  assert.ok(parsed && parsed.kind === "ephemeral");
  assert.equal(hex(parsed.x25519Pk), eph.x25519_pk);
});

Deno.test("key server messages: malformed requests are rejected", () => {
  const good = staticKeyRequest(3, 17);
  assert.equal(parseKeyRequest(good.subarray(0, good.length - 1)), null, "truncated");
  assert.equal(parseKeyRequest(new Uint8Array([0xf0, 0x00])), null, "no fields");
  const wrongPad = staticKeyRequest(3, 909);
  const longer = new Uint8Array(wrongPad.length + 3);
  longer.set(wrongPad);
  assert.equal(parseKeyRequest(longer), null, "trailing bytes");
  const badPos = good.slice();
  badPos[5] = 0xff;
  badPos[6] = 0xff;
  assert.equal(parseKeyRequest(badPos), null, "position outside the tree");
  const zeroLen = good.slice();
  zeroLen[2] = 0;
  zeroLen[3] = 0;
  assert.equal(parseKeyRequest(zeroLen), null, "zero-length field");
  assert.equal(parseKeyRequest(new Uint8Array(0)), null);
  assert.equal(parseKeyRequest(new Uint8Array([0x01, 0x00, 0, 1, 0])), null, "other type");
});

const hv = vectors.handshake;

Deno.test("handshake: the initiator produces the reference's message and keys", () => {
  const c = hv.client;
  const r = initiate({
    mcelieceCt: fromHex(c.mceliece_ct),
    mcelieceSs: fromHex(c.mceliece_ss),
    clientX25519Sk: fromHex(c.x25519_eph_sk),
    clientX25519Pk: fromHex(c.x25519_eph_pk),
    serverStaticX25519Pk: x25519Pk,
    serverEphemeralX25519Pk: fromHex(hv.server_ephemeral.x25519_pk),
    sntrupCt: fromHex(c.sntrup_ct),
    sntrupSs: fromHex(c.sntrup_ss),
  });
  assert.equal(r.message.length, hv.message_len);
  assert.equal(hex(r.message), hv.message);
  assert.equal(hex(r.tid), hv.tid);
  assert.equal(hex(r.i2r), hv.initiator_send_root);
  assert.equal(hex(r.r2i), hv.initiator_recv_root);
});

Deno.test("handshake: the responder opens the reference's message", () => {
  const msg = parseInitiation(fromHex(hv.message))!;
  assert.ok(msg);
  const decoy = { x25519Sk: new Uint8Array(32).fill(7), id: 1 };
  const real = { x25519Sk: fromHex(hv.server_ephemeral.x25519_sk), id: 2 };
  const pending = respondOpen(msg, fromHex(hv.client.mceliece_ss), fixture("x25519_sk"), [
    decoy,
    real,
  ]);
  assert.ok(pending);
  assert.equal(pending.slotId, 2, "the slot whose key opens c3");
  assert.equal(hex(pending.sntrupCt), hv.client.sntrup_ct);
  const r = respondFinish(msg, pending, fromHex(hv.client.sntrup_ss));
  assert.equal(hex(r.tid), hv.tid);
  assert.equal(hex(r.i2r), hv.initiator_send_root);
  assert.equal(hex(r.r2i), hv.initiator_recv_root);
});

Deno.test("handshake: the responder drops tampered, truncated and wrong-key messages", () => {
  const wire = fromHex(hv.message);
  assert.equal(parseInitiation(wire.subarray(0, 1298)), null);
  assert.equal(parseInitiation(new Uint8Array(1300)), null);
  const ss = fromHex(hv.client.mceliece_ss);
  const slots = [{ x25519Sk: fromHex(hv.server_ephemeral.x25519_sk), id: 0 }];
  for (const at of [2 + 194 + 5, 2 + 194 + 32 + 3, 2 + 194 + 48 + 100, 1298]) {
    const t = wire.slice();
    t[at] ^= 0x40;
    assert.equal(respondOpen(parseInitiation(t)!, ss, fixture("x25519_sk"), slots), null);
  }
  const wrongSs = ss.slice();
  wrongSs[0] ^= 1;
  assert.equal(respondOpen(parseInitiation(wire)!, wrongSs, fixture("x25519_sk"), slots), null);
  const expiredSlot = [{ x25519Sk: new Uint8Array(32).fill(9), id: 0 }];
  assert.equal(
    respondOpen(parseInitiation(wire)!, ss, fixture("x25519_sk"), expiredSlot),
    null,
  );
});

const tv = vectors.tunnel;

/** Times that reproduce the vector: 40 packets in epoch 0, then a jump to epoch 2. */
function timeOf(index: number): number {
  return index < 40 ? 1 : 61;
}

Deno.test("tunnel: initiator packets are byte-identical to the reference's", () => {
  const s = TunnelSession.create(
    fromHex(tv.tid),
    fromHex(tv.initiator_send_root),
    fromHex(tv.initiator_recv_root),
    0,
  );
  tv.initiator_packets.forEach(
    (p: { plain: string; wire: string; epoch: number; ctr: number }, i: number) => {
      const wire = s.sealPacket(fromHex(p.plain), timeOf(i));
      assert.equal(hex(wire), p.wire, `packet ${i} (epoch ${p.epoch}, ctr ${p.ctr})`);
    },
  );
});

Deno.test("tunnel: the responder opens them, follows to epoch 2 and answers identically", () => {
  const s = TunnelSession.create(
    fromHex(tv.tid),
    fromHex(tv.initiator_recv_root),
    fromHex(tv.initiator_send_root),
    0,
  );
  tv.initiator_packets.forEach(
    (p: { plain: string; wire: string; epoch: number; ctr: number }, i: number) => {
      const r = s.openPacket(fromHex(p.wire), timeOf(i));
      assert.ok(r.ok, `packet ${i}: ${!r.ok && r.reason}`);
      assert.equal(hex(r.plaintext), p.plain);
      assert.equal(r.epoch, p.epoch);
      assert.equal(r.ctr, p.ctr);
    },
  );
  assert.equal(s.sendEpoch, 2);
  for (const p of tv.responder_packets) {
    assert.equal(hex(s.sealPacket(fromHex(p.plain), 61)), p.wire);
  }
  // and the initiator opens those
  const init = TunnelSession.create(
    fromHex(tv.tid),
    fromHex(tv.initiator_send_root),
    fromHex(tv.initiator_recv_root),
    0,
  );
  for (const p of tv.responder_packets) {
    const r = init.openPacket(fromHex(p.wire), 61);
    assert.ok(r.ok);
    assert.equal(hex(r.plaintext), p.plain);
  }
});

const cv = vectors.cookie;

Deno.test("cookie: key schedule and cookie bytes match the reference", () => {
  const ring = new CookieKeyring(fromHex(cv.master_key), fromHex(cv.seed));
  ring.update(cv.timestamp, fromHex(cv.randomness));
  const issued = ring.issue(cv.timestamp)!;
  assert.equal(hex(issued.key), cv.cookie_key);
  assert.equal(hex(issued.nonce), cv.nonce);
  assert.equal(issued.timestamp, cv.timestamp);
  const contents = {
    tid: fromHex(cv.tid),
    epoch: cv.epoch,
    sendRoot: fromHex(cv.send_root),
    recvRoot: fromHex(cv.recv_root),
  };
  const cookie = buildCookie(issued.key, issued.nonce, issued.timestamp, contents);
  assert.equal(cookie.length, cv.cookie_len);
  assert.equal(hex(cookie), cv.cookie);
  const opened = openCookie(ring.keyFor(cv.timestamp)!, fromHex(cv.cookie))!;
  assert.equal(hex(opened.tid), cv.tid);
  assert.equal(opened.epoch, cv.epoch);
  assert.equal(hex(opened.sendRoot), cv.send_root);
  assert.equal(hex(opened.recvRoot), cv.recv_root);
  // the next cookie under the same key uses the next nonce
  assert.equal(hex(ring.issue(cv.timestamp)!.nonce), "000000000000000000000001");
  const tampered = fromHex(cv.cookie);
  tampered[60] ^= 1;
  assert.equal(openCookie(issued.key, tampered), null);
  assert.equal(openCookie(issued.key, tampered.subarray(0, 143)), null);
});
