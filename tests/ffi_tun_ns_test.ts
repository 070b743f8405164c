// ffi/tun.ts against the real kernel: inside a throw-away network namespace a TUN device is
// created and configured, takes a burst of packets in one readBatch, answers ping, refuses a
// malformed packet without throwing, and disappears when closed. With the other namespace tests
// in the root-only (--allow-all) run of `deno task test`; without root it skips, saying why.

import assert from "node:assert/strict";
import { deleteNetns, resetNetns, runHelper } from "./helpers/ffi_netns.ts";
import { notRootReason } from "./lab/netns.ts";

const NETNS = "pqts-ffi-tun";
const skip = notRootReason();
if (skip) console.log(`ffi_tun_ns_test: skipped, ${skip}`);
const ignore = skip !== null;

interface TunReport {
  name: string;
  mtu: number;
  up: boolean;
  burstSent: number;
  burstRead: number;
  largestBatch: number;
  echoRequests: number;
  repliesWritten: number;
  pingCode: number;
  pingStdout: string;
  garbageAccepted: boolean;
  stats: { writeErrors: number; lastErrno: number; readErrors: number };
  secondName: string;
  adoptedName: string;
  adoptedDeviceName: string;
  existedBeforeClose: boolean;
  existsAfterClose: boolean;
  secondExistsAfterClose: boolean;
  afterCloseRead: number;
}

Deno.test({
  name: "TUN in a namespace: configure, batch read, answer ping, gone after close",
  ignore,
  async fn() {
    await resetNetns(NETNS);
    try {
      const { result: r, output } = await runHelper<TunReport>(
        NETNS,
        "ffi_tun_child.ts",
        [],
        ["--allow-run=ping"],
      );
      assert.equal(output.code, 0, output.stderr);
      assert.match(r.name, /^pqts\d+$/, "the kernel expands the %d pattern");
      assert.equal(r.mtu, 1400);
      assert.equal(r.up, true);
      assert.equal(r.burstSent, 10);
      assert.equal(r.burstRead, 10, "all ten routed datagrams arrive on the TUN");
      assert.ok(r.largestBatch >= 10, `one readBatch took the burst (largest ${r.largestBatch})`);
      assert.equal(r.pingCode, 0, `ping through the TUN failed:\n${r.pingStdout}`);
      assert.match(r.pingStdout, /3 received/);
      assert.ok(r.echoRequests >= 3);
      assert.equal(r.repliesWritten, r.echoRequests);
      assert.equal(r.garbageAccepted, false, "a non-IP packet is refused");
      assert.equal(r.stats.writeErrors, 1);
      assert.equal(r.stats.lastErrno, 22, "EINVAL for the non-IP packet");
      assert.equal(r.stats.readErrors, 0);
      assert.equal(r.adoptedName, r.secondName, "TUNGETIFF names an inherited descriptor");
      assert.equal(r.adoptedDeviceName, r.secondName);
      assert.equal(r.existedBeforeClose, true);
      assert.equal(r.existsAfterClose, false, "non-persistent: gone with its descriptor");
      assert.equal(r.secondExistsAfterClose, false);
      assert.equal(r.afterCloseRead, 0);
    } finally {
      await deleteNetns(NETNS);
    }
  },
});
