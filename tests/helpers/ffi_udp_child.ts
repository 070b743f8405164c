// Runs inside a test network namespace whose loopback is throttled by a tbf qdisc (see
// tests/ffi_udp_ns_test.ts), so a small send buffer fills up: reports how sendBatch copes.

import { UdpSocket } from "../../ffi/udp.ts";

const mode = Deno.args[0] === "plain" ? "plain" : "mmsg";
const rx = UdpSocket.bind(0x7f000001, 0, { bufferBytes: 4096, mode });
const tx = UdpSocket.bind(0x7f000001, 0, { bufferBytes: 4096, mode });
const burst = Array.from({ length: 200 }, () => ({
  data: new Uint8Array(1200),
  addr: 0x7f000001,
  port: rx.localPort,
}));
const sent = tx.sendBatch(burst);
const afterBurst = { ...tx.stats };
const writable = await tx.waitWritable(5000);
const sentLater = tx.sendBatch(burst.slice(0, 1));
rx.close();
tx.close();
console.log(JSON.stringify({ sent, afterBurst, writable, sentLater }));
