// Runs inside a test network namespace (see tests/ffi_netlink_ns_test.ts): exercises
// ffi/rtnetlink.ts on a veth pair and on failures, and prints a JSON report as its last line.

import { ipv4ToNumber } from "../../lib/core/ip.ts";
import {
  addAddress,
  configureInterface,
  deleteLink,
  getLink,
  linkExists,
  linkIndex,
  NetlinkError,
  setLink,
} from "../../ffi/rtnetlink.ts";
import { TunDevice } from "../../ffi/tun.ts";

async function failure(fn: () => Promise<unknown>) {
  try {
    await fn();
    return null;
  } catch (e) {
    const err = e as Error & { code?: number; kernelMessage?: string | null };
    return {
      type: err.name,
      netlink: e instanceof NetlinkError,
      code: err.code ?? null,
      kernelMessage: err.kernelMessage ?? null,
      message: err.message,
    };
  }
}

async function ip(...args: string[]) {
  const out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
  return { code: out.code, text: new TextDecoder().decode(out.stdout) };
}

const report: Record<string, unknown> = {};
report.loExists = await linkExists("lo");
report.loIndex = await linkIndex("lo");
report.missingExists = await linkExists("pqts-none");
report.missingError = await failure(() => getLink("pqts-none"));

report.vethAdd = (await ip("link", "add", "pqv0", "type", "veth", "peer", "name", "pqv1")).code;
const before = await getLink("pqv0");
report.before = { up: before.up, mtu: before.mtu };
const after = await configureInterface("pqv0", {
  address: ipv4ToNumber("198.18.5.1"),
  prefix: 24,
  mtu: 1400,
});
report.after = { up: after.up, mtu: after.mtu, name: after.name, index: after.index };
// Configuring again must be harmless.
report.again = await failure(() =>
  configureInterface("pqv0", { address: ipv4ToNumber("198.18.5.1"), prefix: 24, mtu: 1400 })
);
await addAddress("pqv0", ipv4ToNumber("198.18.6.1"), 30);
const addrs = JSON.parse((await ip("-j", "addr", "show", "dev", "pqv0")).text) as Array<
  { addr_info: Array<{ family: string; local: string; prefixlen: number }> }
>;
report.addresses = addrs[0].addr_info.filter((a) => a.family === "inet").map((a) =>
  `${a.local}/${a.prefixlen}`
);
const routes = await ip("-4", "route", "show", "dev", "pqv0");
report.routes = routes.text.trim().split("\n").map((l) => l.trim());

await setLink("pqv0", { up: false });
report.downUp = (await getLink("pqv0")).up;
report.mtuUnchangedByDown = (await getLink("pqv0")).mtu;

// Refusals from the kernel, with its errno and (extended ACK) explanation.
report.hugeMtu = await failure(() => setLink("pqv0", { mtu: 1_000_000 }));
report.badPrefix = await failure(() => addAddress("pqv0", ipv4ToNumber("198.18.5.1"), 33));
report.badAddress = await failure(() => addAddress("pqv0", 2 ** 32, 24));
report.configureMissing = await failure(() =>
  configureInterface("pqts-none", { address: ipv4ToNumber("198.18.7.1"), prefix: 24 })
);

await deleteLink("pqv0");
report.vethGone = !(await linkExists("pqv0")) && !(await linkExists("pqv1"));
report.deleteMissing = await failure(() => deleteLink("pqv0"));

// TUN devices can be deleted by netlink too; the descriptor then just stops working.
const tun = TunDevice.open("pqts%d");
report.deleteTun = await failure(() => deleteLink(tun.name));
report.tunGoneWhileOpen = !(await linkExists(tun.name));
// The orphaned descriptor fails quietly, as the per-packet methods promise.
report.orphanRead = tun.readBatch([new Uint8Array(2048)], []);
report.orphanWrite = tun.write(new Uint8Array(20).fill(0x45, 0, 1));
tun.close();
report.tunGone = !(await linkExists(tun.name));

console.log(JSON.stringify(report));
