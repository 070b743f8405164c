// The unprivileged half of ffi_privsep_parent.ts: drops privileges before touching anything,
// adopts the TUN descriptor at 3, reports over the channel at 4, and answers echo requests
// until told to stop.

import { currentCredentials, dropPrivileges } from "../../ffi/privdrop.ts";
import { SeqPacketChannel } from "../../ffi/spawn.ts";
import { TunDevice } from "../../ffi/tun.ts";
import { echoReply, isEchoRequest } from "./ffi_icmp.ts";

dropPrivileges(Number(Deno.args[0]), Number(Deno.args[1]));

const tun = TunDevice.fromFd(3);
const channel = new SeqPacketChannel(4);
const enc = new TextEncoder();
await channel.send(enc.encode(JSON.stringify({ name: tun.name, creds: currentCredentials() })));

const bufs = Array.from({ length: 16 }, () => new Uint8Array(2048));
const lens: number[] = [];
let replies = 0;
let stop = false;
const control = channel.recv().then(() => stop = true);
const deadline = Date.now() + 15_000;
while (!stop && Date.now() < deadline) {
  if (!(await tun.waitReadable(100))) continue;
  const n = tun.readBatch(bufs, lens);
  for (let i = 0; i < n; i++) {
    const p = bufs[i].subarray(0, lens[i]);
    if (isEchoRequest(p, "198.18.98.2") && tun.write(echoReply(p))) replies++;
  }
}
await control;
await channel.send(enc.encode(JSON.stringify({ replies, stats: tun.stats })));
tun.close();
channel.close();
