// The server's sans-IO parts: ephemeral key slots, replay cache, address pool, key answers.

import assert from "node:assert/strict";
import { EphemeralKeyStore, LEAD_SECONDS, slotOf } from "../lib/core/ephemeral.ts";
import { AddressPool } from "../lib/core/addresses.ts";
import { ipv4ToNumber, numberToIpv4 } from "../lib/core/ip.ts";
import { answerKeyRequest } from "../lib/core/keyserver.ts";
import { KeyTree } from "../lib/core/keytree.ts";
import { ephemeralKeyRequest, parseKeyResponse, staticKeyRequest } from "../lib/core/keymsg.ts";
import { fixture } from "./fixtures.ts";

function fakeKeys(slot: number) {
  return {
    slot,
    sntrupPk: new Uint8Array(1158).fill(slot % 251),
    sntrupSk: new Uint8Array(1763).fill(1),
    x25519Pk: new Uint8Array(32).fill(2),
    x25519Sk: new Uint8Array(32).fill(3),
  };
}

Deno.test("ephemeral keys: made just before their slot, live 120 s, then erased", () => {
  const store = new EphemeralKeyStore();
  const t0 = 1_000_000_045; // 25 s into a slot
  assert.deepEqual(store.due(t0 - 15), [slotOf(t0 - 15)]);
  const s0 = slotOf(t0);
  assert.deepEqual(store.due(t0), [s0, s0 + 30], "next slot is due within the lead time");
  const k0 = fakeKeys(s0);
  store.add(k0);
  store.add(fakeKeys(s0 + 30));
  assert.deepEqual(store.due(t0), []);
  assert.equal(store.current(t0)!.slot, s0);
  assert.equal(store.current(s0 + 30)!.slot, s0 + 30);
  assert.deepEqual(store.live(s0 + 31).map((k) => k.slot), [s0 + 30, s0], "newest first");
  assert.equal(store.live(s0 + 119).length, 2);
  assert.equal(store.expire(s0 + 119), 0);
  assert.equal(store.expire(s0 + 120), 1);
  assert.ok(k0.x25519Sk.every((b) => b === 0), "secret erased");
  assert.ok(k0.sntrupSk.every((b) => b === 0), "secret erased");
  assert.equal(store.get(s0), null);
  assert.ok(LEAD_SECONDS > 0 && LEAD_SECONDS < 30);
});

Deno.test("address pool: skips network, own and broadcast addresses, reuses freed ones", () => {
  const pool = new AddressPool(ipv4ToNumber("10.42.0.1"), 29);
  const got: string[] = [];
  for (;;) {
    const a = pool.allocate();
    if (a === null) break;
    got.push(numberToIpv4(a));
  }
  assert.deepEqual(got, ["10.42.0.2", "10.42.0.3", "10.42.0.4", "10.42.0.5", "10.42.0.6"]);
  pool.release(ipv4ToNumber("10.42.0.4"));
  assert.equal(numberToIpv4(pool.allocate()!), "10.42.0.4");
  assert.equal(pool.allocate(), null);
  assert.ok(pool.contains(ipv4ToNumber("10.42.0.7")) === false);
});

Deno.test("key server answers only well-formed, same-length requests", () => {
  const tree = KeyTree.build(fixture("mceliece_pk"), fixture("x25519_pk"));
  const store = new EphemeralKeyStore();
  const req = staticKeyRequest(3, 100);
  const a = answerKeyRequest(req, tree, store, 1000);
  assert.ok(a.ok);
  assert.equal(a.response.length, req.length);
  const parsed = parseKeyResponse(a.response);
  assert.ok(parsed?.kind === "static");
  assert.deepEqual(parsed.node, tree.node(3, 100));
  assert.deepEqual(answerKeyRequest(ephemeralKeyRequest(), tree, store, 1000), {
    ok: false,
    reason: "no-ephemeral-keys",
  });
  store.add(fakeKeys(990));
  const e = answerKeyRequest(ephemeralKeyRequest(), tree, store, 1000);
  assert.ok(e.ok && e.response.length === 1196);
  for (
    const junk of [
      new Uint8Array(0),
      new Uint8Array(1),
      crypto.getRandomValues(new Uint8Array(1200)),
    ]
  ) {
    assert.deepEqual(answerKeyRequest(junk, tree, store, 1000), { ok: false, reason: "malformed" });
  }
  const short = staticKeyRequest(3, 100).subarray(0, 100);
  assert.equal(answerKeyRequest(short, tree, store, 1000).ok, false);
});
