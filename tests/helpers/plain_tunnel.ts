// A tunnel without cryptography, the lossy-link test's baseline: a TUN device whose packets
// travel as bare UDP datagrams to the other end, through the same fault-injecting relay as the
// real tunnel. What TCP achieves over it is what the link allows; the real tunnel's figure is
// compared with it in the same run. Runs as root inside a lab namespace.
//
//   deno run --allow-all --unstable-net tests/helpers/plain_tunnel.ts \
//     --address 10.99.0.2 --mtu 1400 --listen 198.18.0.2:0 [--to 198.18.0.3:42426]
// Without --to it answers whoever sent it the last datagram (the server end).

import { ipv4ToNumber } from "../../lib/core/ip.ts";
import { TunDevice } from "../../ffi/tun.ts";
import { configureInterface } from "../../ffi/rtnetlink.ts";

const args = new Map<string, string>();
for (let i = 0; i < Deno.args.length; i += 2) {
  args.set(Deno.args[i].replace(/^--/, ""), Deno.args[i + 1]);
}
const [listenHost, listenPort] = args.get("listen")!.split(":");
let peer: Deno.NetAddr | null = null;
if (args.has("to")) {
  const [h, p] = args.get("to")!.split(":");
  peer = { transport: "udp", hostname: h, port: Number(p) };
}
const dev = TunDevice.open("pqplain%d");
await configureInterface(dev.name, {
  address: ipv4ToNumber(args.get("address")!),
  prefix: 24,
  mtu: Number(args.get("mtu") ?? 1400),
});
const sock = Deno.listenDatagram({
  transport: "udp",
  hostname: listenHost,
  port: Number(listenPort),
});
const stats = { fromTun: 0, toTun: 0, noPeer: 0 };

(async () => {
  for await (const [d, from] of sock) {
    peer ??= from as Deno.NetAddr;
    if (!args.has("to")) peer = from as Deno.NetAddr;
    if (dev.write(d)) stats.toTun++;
  }
})();

const bufs = Array.from({ length: 32 }, () => new Uint8Array(65536));
const lens: number[] = [];
setInterval(() => console.log(`PLAIN ${JSON.stringify(stats)}`), 5000);
Deno.addSignalListener("SIGTERM", () => {
  console.log(`PLAIN ${JSON.stringify(stats)}`);
  Deno.exit(0);
});
console.log(`plain tunnel ${dev.name} ${args.get("address")} up`);
while (true) {
  if (!(await dev.waitReadable(100))) continue;
  const n = dev.readBatch(bufs, lens);
  for (let i = 0; i < n; i++) {
    if (!peer) {
      stats.noPeer++;
      continue;
    }
    stats.fromTun++;
    sock.send(bufs[i].slice(0, lens[i]), peer).catch(() => {});
  }
}
