// ffi/privdrop.ts: user lookup in-process; the real drop in a spawned child (a test process
// cannot drop its own privileges and go on testing), checked thread by thread in /proc.

import assert from "node:assert/strict";
import {
  currentCredentials,
  dropPrivileges,
  lookupUser,
  PrivilegeDropError,
} from "../ffi/privdrop.ts";
import { deleteNetns, resetNetns, rootOnly, runHelper } from "./helpers/ffi_netns.ts";

const NETNS = "pqts-ffi-privdrop";
const ignore = rootOnly("ffi_privdrop_test");

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

interface ThreadStatus {
  tid: string;
  Name: string;
  Uid: string;
  Gid: string;
  Groups: string;
  NoNewPrivs: string;
  CapEff: string;
}

interface PrivdropReport {
  user: { uid: number; gid: number };
  threadsBefore: number;
  tunAsRoot: unknown;
  threads: ThreadStatus[];
  creds: { uid: number[]; gid: number[]; groups: number[] };
  tunAfterDrop: { type: string; code: number | null; message: string } | null;
  setuid0: number;
  setresuid0: number;
  dropAgain: { type: string; message: string } | null;
  dropAgainIsPrivilegeDropError: boolean;
}

Deno.test({
  name: "dropping to nobody covers every thread and cannot be undone",
  ignore,
  async fn() {
    await resetNetns(NETNS); // the child opens TUN devices: keep them out of this namespace
    try {
      const { result: r, output } = await runHelper<PrivdropReport>(
        NETNS,
        "ffi_privdrop_child.ts",
        [],
        ["--allow-all"], // Deno only lets --allow-all read /proc
      );
      assert.equal(output.code, 0, output.stderr);
      const { uid, gid } = r.user;
      assert.equal(r.tunAsRoot, null, "as root the child could create a TUN device");
      assert.ok(r.threads.length > 1, "Deno runs several threads");
      const ids = (n: number) => `${n}\t${n}\t${n}\t${n}`;
      for (const t of r.threads) {
        assert.equal(t.Uid, ids(uid), `thread ${t.tid} (${t.Name}) uid`);
        assert.equal(t.Gid, ids(gid), `thread ${t.tid} (${t.Name}) gid`);
        assert.equal(t.Groups, `${gid}`, `thread ${t.tid} (${t.Name}) groups`);
        assert.equal(t.NoNewPrivs, "1", `thread ${t.tid} (${t.Name}) no_new_privs`);
        assert.equal(t.CapEff, "0000000000000000", `thread ${t.tid} (${t.Name}) capabilities`);
      }
      assert.deepEqual(r.creds, { uid: [uid, uid, uid], gid: [gid, gid, gid], groups: [gid] });
      assert.ok(r.tunAfterDrop !== null, "no TUN device once unprivileged");
      assert.ok(
        r.tunAfterDrop.code === 1 || r.tunAfterDrop.code === 13,
        `EPERM or EACCES expected: ${r.tunAfterDrop.message}`,
      );
      assert.equal(r.setuid0, -1);
      assert.equal(r.setresuid0, -1);
      assert.equal(r.dropAgain?.type, "PrivilegeDropError");
      assert.equal(r.dropAgainIsPrivilegeDropError, true);
    } finally {
      await deleteNetns(NETNS);
    }
  },
});
