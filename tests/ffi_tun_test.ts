// ffi/tun.ts: names the kernel cannot take are refused before any device is made. The devices
// themselves, in a throw-away network namespace: tests/ffi_tun_ns_test.ts, in the root-only run.

import assert from "node:assert/strict";
import { openTun } from "../ffi/tun.ts";

Deno.test("openTun rejects names the kernel cannot take", () => {
  assert.throws(() => openTun(""), RangeError);
  assert.throws(() => openTun("a-name-too-long-for-ifnamsiz"), RangeError);
  assert.throws(() => openTun("bad\0name"), RangeError);
});
