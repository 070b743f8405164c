// ffi/udp.ts when the send queue is full, in both modes (recvmmsg/sendmmsg and plain). It needs a
// network namespace of its own (a slow qdisc on its loopback), so it runs with the other
// namespace tests in the root-only (--allow-all) run of `deno task test`; without root it skips,
// saying why.

import assert from "node:assert/strict";
import { deleteNetns, resetNetns, run, runHelper } from "./helpers/ffi_netns.ts";
import { notRootReason } from "./lab/netns.ts";

const NETNS = "pqts-ffi-udp";
const skip = notRootReason();
if (skip) console.log(`ffi_udp_ns_test: skipped, ${skip}`);
const ignore = skip !== null;

for (const mode of ["mmsg", "plain"] as const) {
  Deno.test({
    name: `${mode}: a full send queue drops the rest of a batch, counted, no exception`,
    ignore,
    async fn() {
      await resetNetns(NETNS);
      try {
        // A slow qdisc on the namespace's loopback holds datagrams (and their send-buffer
        // charge) long enough for a 4 KiB send buffer to fill.
        const tc = await run("ip", [
          "netns",
          "exec",
          NETNS,
          "tc",
          "qdisc",
          "add",
          "dev",
          "lo",
          "root",
          "tbf",
          "rate",
          "1mbit",
          "burst",
          "1600",
          "limit",
          "100000",
        ]);
        assert.equal(tc.code, 0, tc.stderr);
        const { result: r, output } = await runHelper<{
          sent: number;
          afterBurst: { sent: number; sendFailures: number; lastErrno: number };
          writable: boolean;
          sentLater: number;
        }>(NETNS, "ffi_udp_child.ts", [mode]);
        assert.equal(output.code, 0, output.stderr);
        assert.ok(r.sent > 0 && r.sent < 200, `sent ${r.sent} of 200`);
        assert.equal(r.afterBurst.sent, r.sent);
        assert.equal(r.afterBurst.sendFailures, 200 - r.sent);
        assert.equal(r.afterBurst.lastErrno, 11, "EAGAIN");
        assert.equal(r.writable, true, "waitWritable reports room once the queue drains");
        assert.equal(r.sentLater, 1);
      } finally {
        await deleteNetns(NETNS);
      }
    },
  });
}
