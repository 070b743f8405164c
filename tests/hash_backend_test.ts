// Nettle's SHAKE256 (lib/runtime/hash_backend.ts) against the JS one, and h() with either.

import assert from "node:assert/strict";
import { shake256 } from "@noble/hashes/sha3.js";
import { h, setShake256 } from "../lib/core/crypto.ts";
import { installHashBackend } from "../lib/runtime/hash_backend.ts";
import { nettlePath } from "../ffi/nettle.ts";

function reference(parts: Uint8Array[]): Uint8Array {
  const ctx = shake256.create({ dkLen: 32 });
  for (const p of parts) ctx.update(p);
  return ctx.digest();
}

Deno.test({
  name: "h() through Nettle equals SHAKE256 in JS, whatever the sizes and the split",
  ignore: nettlePath() === null,
  fn() {
    assert.equal(installHashBackend(), "nettle");
    try {
      // Around the 136-byte rate, a key-tree node, a whole McEliece-sized input.
      for (const size of [0, 1, 135, 136, 137, 272, 1152, 1184, 100_000]) {
        const data = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)));
        const big = size > 65536 ? new Uint8Array(size).map((_, i) => i * 31) : data;
        assert.deepEqual(h(big), reference([big]), `${size} bytes`);
        const cut = Math.floor(big.length / 3);
        const parts = [big.subarray(0, cut), new Uint8Array(0), big.subarray(cut)];
        assert.deepEqual(h(...parts), reference(parts), `${size} bytes in parts`);
      }
    } finally {
      setShake256(null);
    }
  },
});
