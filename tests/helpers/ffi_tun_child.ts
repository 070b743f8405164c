// Runs inside a test network namespace (see tests/ffi_tun_ns_test.ts): creates a TUN device,
// configures it with ffi/rtnetlink.ts, answers `ping` through it, checks batching and error
// counting, and prints a JSON report as its last line.

import { ipv4ToNumber } from "../../lib/core/ip.ts";
import { openTun, TunDevice, tunName } from "../../ffi/tun.ts";
import { configureInterface, linkExists } from "../../ffi/rtnetlink.ts";
import { UdpSocket } from "../../ffi/udp.ts";
import { libc } from "../../ffi/libc.ts";
import { echoReply, ipv4Dst, isEchoRequest } from "./ffi_icmp.ts";

const LOCAL = "198.18.99.1";
const PEER = "198.18.99.2";

const dev = TunDevice.open("pqts%d");
const link = await configureInterface(dev.name, {
  address: ipv4ToNumber(LOCAL),
  prefix: 24,
  mtu: 1400,
});
const bufs = Array.from({ length: 32 }, () => new Uint8Array(2048));
const lens: number[] = [];

// Batching: datagrams routed into the TUN queue up; one readBatch call should take them all.
const udp = UdpSocket.bind(ipv4ToNumber(LOCAL), 0);
const burst = Array.from({ length: 10 }, (_, i) => ({
  data: new Uint8Array(100).fill(i),
  addr: 0xc6126302, // 198.18.99.2
  port: 9,
}));
const burstSent = udp.sendBatch(burst);
udp.close();
await dev.waitReadable(1000);
let burstRead = 0;
let largestBatch = 0;
for (let tries = 0; tries < 20 && burstRead < burstSent; tries++) {
  const n = dev.readBatch(bufs, lens);
  largestBatch = Math.max(largestBatch, n);
  for (let i = 0; i < n; i++) {
    const p = bufs[i].subarray(0, lens[i]);
    if (p[9] === 17 && ipv4Dst(p) === PEER) burstRead++;
  }
  if (n === 0) await dev.waitReadable(100);
}

// Answer ping's echo requests ourselves, as the peer would.
const ping = new Deno.Command("ping", {
  args: ["-n", "-c", "3", "-i", "0.2", "-W", "2", PEER],
  stdout: "piped",
  stderr: "piped",
}).spawn();
let pingDone = false;
const pingStatus = ping.output().finally(() => pingDone = true);
let echoRequests = 0;
let repliesWritten = 0;
const deadline = Date.now() + 8000;
while (!pingDone && Date.now() < deadline) {
  if (!(await dev.waitReadable(100))) continue;
  const n = dev.readBatch(bufs, lens);
  for (let i = 0; i < n; i++) {
    const p = bufs[i].subarray(0, lens[i]);
    if (!isEchoRequest(p, PEER)) continue;
    echoRequests++;
    if (dev.write(echoReply(p))) repliesWritten++;
  }
}
const pingOut = await pingStatus;

// A packet that is not IP is refused: write() says so and counts it, without throwing.
const garbageAccepted = dev.write(new Uint8Array([0x00, 1, 2, 3]));
const statsBefore = { ...dev.stats };

// A second device, adopted by descriptor as a privilege-separated worker would.
const second = openTun("pqtsx%d");
const adopted = TunDevice.fromFd(second.fd);
const adoptedName = tunName(second.fd);

const existedBeforeClose = await linkExists(dev.name);
dev.close();
adopted.close();
// Reading a closed device is a no-op, not an exception.
const afterCloseRead = dev.readBatch(bufs, lens);

console.log(JSON.stringify({
  name: dev.name,
  mtu: link.mtu,
  up: link.up,
  burstSent,
  burstRead,
  largestBatch,
  echoRequests,
  repliesWritten,
  pingCode: pingOut.code,
  pingStdout: new TextDecoder().decode(pingOut.stdout),
  garbageAccepted,
  stats: statsBefore,
  secondName: second.name,
  adoptedName,
  adoptedDeviceName: adopted.name,
  existedBeforeClose,
  existsAfterClose: await linkExists(dev.name),
  secondExistsAfterClose: await linkExists(second.name),
  afterCloseRead,
  uid: libc().getuid(),
}));
