// ffi/rtnetlink.ts against the real kernel: read-only queries in the test's own namespace. What
// changes links runs in a throw-away namespace: tests/ffi_netlink_ns_test.ts, in the root-only run.

import assert from "node:assert/strict";
import { getLink, linkExists, NetlinkError } from "../ffi/rtnetlink.ts";

Deno.test("link queries: lo exists, a missing link is ENODEV", async () => {
  assert.equal(await linkExists("lo"), true);
  const lo = await getLink("lo");
  assert.equal(lo.name, "lo");
  assert.equal(lo.index, 1);
  assert.ok(lo.mtu > 0);
  assert.equal(await linkExists("pqts-none"), false);
  await assert.rejects(getLink("pqts-none"), (e: unknown) => {
    assert.ok(e instanceof NetlinkError);
    assert.equal(e.code, 19);
    assert.match(e.message, /RTM_GETLINK "pqts-none": No such device \(errno 19\)/);
    return true;
  });
  await assert.rejects(getLink("this-name-is-far-too-long"), RangeError);
});
