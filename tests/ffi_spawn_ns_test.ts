// ffi/spawn.ts in the whole privilege-separation flow, in a throw-away network namespace: the
// root parent owns the TUN device, the worker it spawns drops to nobody and serves the device over
// the descriptors it was handed. With the other namespace tests in the root-only (--allow-all) run
// of `deno task test`; without root it skips, saying why.

import assert from "node:assert/strict";
import { deleteNetns, libcPath, resetNetns, runHelper } from "./helpers/ffi_netns.ts";
import { notRootReason } from "./lab/netns.ts";

const NETNS = "pqts-ffi-spawn";
const skip = notRootReason();
if (skip) console.log(`ffi_spawn_ns_test: skipped, ${skip}`);
const ignore = skip !== null;

interface PrivsepReport {
  tunName: string;
  hello: { name: string; creds: { uid: number[]; gid: number[]; groups: number[] } };
  summary: { replies: number };
  pingCode: number;
  pingStdout: string;
  eofAfterExit: boolean;
  exit: { code: number | null; signal: number | null };
  tunGone: boolean;
}

Deno.test({
  name: "privilege separation: root parent's TUN served by a worker running as nobody",
  ignore,
  async fn() {
    await resetNetns(NETNS);
    try {
      const { result: r, output } = await runHelper<PrivsepReport>(
        NETNS,
        "ffi_privsep_parent.ts",
        [libcPath()],
        ["--allow-all"],
      );
      assert.equal(output.code, 0, output.stderr);
      assert.equal(r.hello.name, r.tunName, "the worker found the device behind fd 3");
      assert.ok(r.hello.creds.uid.every((id) => id !== 0));
      assert.ok(r.hello.creds.gid.every((id) => id !== 0));
      assert.equal(r.pingCode, 0, r.pingStdout);
      assert.equal(r.summary.replies, 2);
      assert.equal(r.eofAfterExit, true);
      assert.deepEqual(r.exit.code, 0);
      assert.equal(r.tunGone, true, "the device went with the worker's descriptor");
    } finally {
      await deleteNetns(NETNS);
    }
  },
});
