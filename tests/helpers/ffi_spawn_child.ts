// Spawned by tests/ffi_spawn_test.ts with two SOCK_SEQPACKET ends at descriptors 3 and 4:
// answers on both, echoes messages back on 3 until the parent closes it, then exits 0.

import { SeqPacketChannel } from "../../ffi/spawn.ts";

const on3 = new SeqPacketChannel(3);
const on4 = new SeqPacketChannel(4);
const enc = new TextEncoder();
const first = await on3.recv(5000);
await on3.send(enc.encode(JSON.stringify({
  args: Deno.args,
  env: Deno.env.get("PQTS_TEST") ?? null,
  first: first === null ? null : new TextDecoder().decode(first),
  pid: Deno.pid,
})));
await on4.send(enc.encode("hello on 4"));
for (;;) {
  const m = await on3.recv(5000);
  if (m === null) break;
  await on3.send(m);
}
Deno.exit(0);
