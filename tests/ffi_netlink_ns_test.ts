// ffi/rtnetlink.ts changing links in a throw-away network namespace: a veth configured, the
// kernel's errors, links deleted, an orphaned TUN descriptor. It runs with the other namespace
// tests in the root-only (--allow-all) run of `deno task test`; without root it skips, saying why.

import assert from "node:assert/strict";
import { deleteNetns, resetNetns, runHelper } from "./helpers/ffi_netns.ts";
import { notRootReason } from "./lab/netns.ts";

const NETNS = "pqts-ffi-netlink";
const skip = notRootReason();
if (skip) console.log(`ffi_netlink_ns_test: skipped, ${skip}`);
const ignore = skip !== null;

interface Failure {
  type: string;
  netlink: boolean;
  code: number | null;
  kernelMessage: string | null;
  message: string;
}

interface NetlinkReport {
  loExists: boolean;
  loIndex: number;
  missingExists: boolean;
  missingError: Failure;
  vethAdd: number;
  before: { up: boolean; mtu: number };
  after: { up: boolean; mtu: number; name: string; index: number };
  again: Failure | null;
  addresses: string[];
  routes: string[];
  downUp: boolean;
  mtuUnchangedByDown: number;
  hugeMtu: Failure;
  badPrefix: Failure;
  badAddress: Failure;
  configureMissing: Failure;
  vethGone: boolean;
  deleteMissing: Failure;
  deleteTun: Failure | null;
  tunGoneWhileOpen: boolean;
  orphanRead: number;
  orphanWrite: boolean;
  tunGone: boolean;
}

Deno.test({
  name: "rtnetlink in a namespace: configure a veth, kernel errors, delete links",
  ignore,
  async fn() {
    await resetNetns(NETNS);
    try {
      const { result: r, output } = await runHelper<NetlinkReport>(
        NETNS,
        "ffi_netlink_child.ts",
        [],
        ["--allow-run=ip"],
      );
      assert.equal(output.code, 0, output.stderr);
      assert.equal(r.loExists, true);
      assert.equal(r.loIndex, 1);
      assert.equal(r.missingExists, false);
      assert.equal(r.missingError.code, 19);
      assert.equal(r.vethAdd, 0);
      assert.deepEqual(r.before, { up: false, mtu: 1500 });
      assert.equal(r.after.up, true);
      assert.equal(r.after.mtu, 1400);
      assert.equal(r.after.name, "pqv0");
      assert.equal(r.again, null, "configuring twice is harmless");
      assert.deepEqual(r.addresses, ["198.18.5.1/24", "198.18.6.1/30"]);
      assert.ok(r.routes.some((l) => l.startsWith("198.18.5.0/24 ")), r.routes.join("\n"));
      assert.equal(r.downUp, false);
      assert.equal(r.mtuUnchangedByDown, 1400, "bringing a link down leaves its MTU alone");
      assert.equal(r.hugeMtu.netlink, true);
      assert.equal(r.hugeMtu.code, 22);
      assert.match(r.hugeMtu.message, /RTM_NEWLINK "pqv0" mtu 1000000: Invalid argument/);
      // The kernel's extended ACK text, when this kernel sends one.
      if (r.hugeMtu.kernelMessage !== null) {
        assert.match(r.hugeMtu.message, /\(kernel: .+\)/);
      }
      assert.equal(r.badPrefix.type, "RangeError");
      assert.equal(r.badAddress.type, "RangeError");
      assert.equal(r.configureMissing.code, 19);
      assert.equal(r.vethGone, true, "deleting one end of a veth removes both");
      assert.equal(r.deleteMissing.code, 19);
      assert.match(r.deleteMissing.message, /RTM_DELLINK "pqv0": No such device/);
      assert.equal(r.deleteTun, null);
      assert.equal(r.tunGoneWhileOpen, true);
      assert.equal(r.orphanRead, 0, "reads on an orphaned TUN descriptor fail quietly");
      assert.equal(r.orphanWrite, false);
      assert.equal(r.tunGone, true);
    } finally {
      await deleteNetns(NETNS);
    }
  },
});
