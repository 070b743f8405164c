// The privilege-separation flow end to end, run as root inside a test network namespace (see
// tests/ffi_spawn_ns_test.ts): the parent opens and configures the TUN device, then spawns
// ffi_privsep_worker.ts with the TUN descriptor at 3 and a socket-pair end at 4; the worker
// drops to `nobody` first thing and answers ping through the inherited device.

import { ipv4ToNumber } from "../../lib/core/ip.ts";
import { configureInterface, linkExists } from "../../ffi/rtnetlink.ts";
import { closeFd, SeqPacketChannel, socketPair, spawnWithFds, waitChild } from "../../ffi/spawn.ts";
import { TunDevice } from "../../ffi/tun.ts";
import { lookupUser } from "../../ffi/privdrop.ts";

const [libcPath] = Deno.args;
const tun = TunDevice.open("pqts%d");
await configureInterface(tun.name, { address: ipv4ToNumber("198.18.98.1"), prefix: 24, mtu: 1400 });
const nobody = lookupUser("nobody");
const [mine, theirs] = socketPair();
const worker = new URL("./ffi_privsep_worker.ts", import.meta.url).pathname;
const pid = spawnWithFds(
  Deno.execPath(),
  ["deno", "run", "--quiet", `--allow-ffi=${libcPath}`, worker, `${nobody.uid}`, `${nobody.gid}`],
  { PATH: "/usr/bin:/bin", HOME: Deno.env.get("HOME") ?? "/root", NO_COLOR: "1" },
  [[tun.fd, 3], [theirs, 4]],
);
// The worker has its copies now; keeping ours would keep the device alive after it exits.
closeFd(theirs);
const tunName = tun.name;
tun.close();
const channel = new SeqPacketChannel(mine);
const dec = new TextDecoder();
const hello = JSON.parse(dec.decode((await channel.recv(10_000))!));

const ping = await new Deno.Command("ping", {
  args: ["-n", "-c", "2", "-i", "0.2", "-W", "2", "198.18.98.2"],
  stdout: "piped",
}).output();
await channel.send(new TextEncoder().encode("stop"));
const summary = JSON.parse(dec.decode((await channel.recv(10_000))!));
const eof = await channel.recv(10_000);
const exit = await waitChild(pid, 10_000);
channel.close();

console.log(JSON.stringify({
  tunName,
  hello,
  summary,
  pingCode: ping.code,
  pingStdout: dec.decode(ping.stdout),
  eofAfterExit: eof === null,
  exit,
  tunGone: !(await linkExists(tunName)),
}));
