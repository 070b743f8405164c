// ffi/privdrop.ts: the real drop, in a spawned child (a test process cannot drop its own
// privileges and go on testing), checked thread by thread in /proc; the child opens TUN devices,
// so it runs in a throw-away network namespace. With the other namespace tests in the root-only
// (--allow-all) run of `deno task test`; without root it skips, saying why.

import assert from "node:assert/strict";
import { deleteNetns, resetNetns, runHelper } from "./helpers/ffi_netns.ts";
import { notRootReason } from "./lab/netns.ts";

const NETNS = "pqts-ffi-privdrop";
const skip = notRootReason();
if (skip) console.log(`ffi_privdrop_ns_test: skipped, ${skip}`);
const ignore = skip !== null;

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
