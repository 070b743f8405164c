// The cookie keyring on its own: a cookie opens once for the whole life of its key, a forgery
// uses up nothing, and each key issues a bounded number of cookies.

import assert from "node:assert/strict";
import { buildCookie, CookieKeyring, MAX_COOKIES_PER_SLOT } from "../lib/core/cookie.ts";

function cookieAt(ring: CookieKeyring, time: number, epoch = 7): Uint8Array {
  const issued = ring.issue(time)!;
  return buildCookie(issued.key, issued.nonce, issued.timestamp, {
    tid: new Uint8Array(32).fill(1),
    epoch,
    sendRoot: new Uint8Array(32).fill(2),
    recvRoot: new Uint8Array(32).fill(3),
  });
}

Deno.test("cookie: redeemed once while its key lives, unreadable after", () => {
  const ring = new CookieKeyring(new Uint8Array(32).fill(9), new Uint8Array(32));
  const rand = () => crypto.getRandomValues(new Uint8Array(32));
  ring.update(3000, rand());
  const cookie = cookieAt(ring, 3001);
  const forged = cookie.slice();
  forged[100] ^= 1;
  assert.deepEqual(ring.redeem(forged), { ok: false, reason: "invalid" });
  const first = ring.redeem(cookie);
  assert.ok(first.ok && first.contents.epoch === 7, "a forgery used up nothing");
  for (let t = 3000; t <= 3149; t += 1) {
    ring.update(t, rand());
    assert.deepEqual(ring.redeem(cookie), { ok: false, reason: "replay" }, `at ${t}`);
  }
  ring.update(3150, rand()); // the slot is 150 s old: its key and its memory go together
  assert.deepEqual(ring.redeem(cookie), { ok: false, reason: "invalid" });
  assert.equal(ring.redeemedCount, 0);
  // a second keyring from the same session key (a restarted server) reads none of them
  const fresh = cookieAt(ring, 3150);
  const restarted = new CookieKeyring(new Uint8Array(32).fill(9), rand());
  restarted.update(3150, rand());
  assert.deepEqual(restarted.redeem(fresh), { ok: false, reason: "invalid" });
});

Deno.test("cookie: a key issues at most MAX_COOKIES_PER_SLOT cookies", () => {
  const ring = new CookieKeyring(new Uint8Array(32), new Uint8Array(32));
  ring.update(60, new Uint8Array(32));
  for (let i = 0; i < MAX_COOKIES_PER_SLOT; i++) assert.ok(ring.issue(61));
  assert.equal(ring.issue(62), null);
  ring.update(90, new Uint8Array(32));
  assert.ok(ring.issue(90), "the next slot's key issues again");
});

Deno.test("cookie: in the moment before the new slot's key is made, the previous key issues", () => {
  const ring = new CookieKeyring(new Uint8Array(32), new Uint8Array(32));
  ring.update(89.5, new Uint8Array(32));
  // the tick makes slot 90's key at about 90.5: an eviction at 90.2 still gets a cookie
  const early = ring.issue(90.2)!;
  assert.equal(early.timestamp, 60);
  const cookie = buildCookie(early.key, early.nonce, early.timestamp, {
    tid: new Uint8Array(32).fill(1),
    epoch: 3,
    sendRoot: new Uint8Array(32).fill(2),
    recvRoot: new Uint8Array(32).fill(3),
  });
  ring.update(90.5, new Uint8Array(32));
  assert.equal(ring.issue(90.6)!.timestamp, 90);
  const r = ring.redeem(cookie);
  assert.ok(r.ok && r.contents.epoch === 3);
  // two slots on, nothing older than the previous slot stands in
  assert.equal(ring.issue(150.1), null);
});
