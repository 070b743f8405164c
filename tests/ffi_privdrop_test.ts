// ffi/privdrop.ts: user lookup and the refusals that come before any change, in-process. The real
// drop runs in a spawned child in a throw-away namespace: tests/ffi_privdrop_ns_test.ts, in the
// root-only run.

import assert from "node:assert/strict";
import {
  currentCredentials,
  dropPrivileges,
  lookupUser,
  PrivilegeDropError,
} from "../ffi/privdrop.ts";

Deno.test("lookupUser finds nobody and root, and names a missing user", () => {
  const nobody = lookupUser("nobody");
  assert.equal(nobody.name, "nobody");
  assert.ok(nobody.uid > 0);
  assert.ok(nobody.gid > 0);
  const root = lookupUser("root");
  assert.equal(root.uid, 0);
  assert.equal(root.gid, 0);
  assert.equal(root.home, "/root");
  assert.throws(() => lookupUser("pqts-no-such-user"), {
    message: 'user "pqts-no-such-user" does not exist',
  });
  assert.throws(() => lookupUser(""), RangeError);
  assert.throws(() => lookupUser("a\0b"), RangeError);
});

Deno.test("dropPrivileges refuses uid/gid 0 and bad IDs before changing anything", () => {
  const before = currentCredentials();
  assert.throws(() => dropPrivileges(0, 0), PrivilegeDropError);
  assert.throws(() => dropPrivileges(65534, 0), PrivilegeDropError);
  assert.throws(() => dropPrivileges(-1, 65534), RangeError);
  assert.throws(() => dropPrivileges(1.5, 65534), RangeError);
  assert.deepEqual(currentCredentials(), before);
  assert.equal(before.uid[1], Deno.uid());
});
