// Key download over 127.0.0.1, no root: the server's key loop (serveKeys, as the daemon runs it)
// answers the client's KeyFetcher, driven the way the client's worker drives it (a socket of
// its own, every answer fed back at once, new requests sent as the window allows). Prints the
// time for the 937 parts of the reference key set, how many requests it took, and how much of
// the time the client spent receiving and checking parts (SHA3-256 of each, in JS).
//
//   deno task bench:keys [runs] [js]

import { KeyFetcher } from "../lib/client/keyfetch.ts";
import { UdpSocket } from "../ffi/udp.ts";
import { installHashBackend } from "../lib/runtime/hash_backend.ts";

const LOOPBACK = 0x7f000001;
const runs = Number(Deno.args[0] ?? 5);
// `deno task bench:keys 5 js` checks the parts with the JS SHAKE256 instead of Nettle's.
const shake = Deno.args[1] === "js" ? "js" : installHashBackend();
console.log(`SHAKE256 for the part checks: ${shake}`);
const worker = new Worker(new URL("./keyfetch_server_worker.ts", import.meta.url), {
  type: "module",
});
const server: { port: number; root: Uint8Array } = await new Promise((resolve) => {
  worker.onmessage = (e) => resolve(e.data);
});

const t0 = performance.now();
const now = () => (performance.now() - t0) / 1000;

async function download(): Promise<
  { ms: number; requests: number; parts: number; verifyMs: number; batches: number }
> {
  const sock = UdpSocket.bind(LOOPBACK, 0, { maxDatagram: 2048, batch: 64 });
  const port = server.port;
  const fetcher = new KeyFetcher(server.root, now());
  let verifyMs = 0;
  let batches = 0;
  try {
    while (!fetcher.complete) {
      for (const req of fetcher.poll(now())) sock.queue(req, LOOPBACK, port);
      sock.flush();
      const wait = Math.max(1, Math.ceil(fetcher.nextDeadline(now()) * 1000));
      if (!(await sock.waitReadable(Math.min(wait, 200)))) continue;
      const tv = performance.now();
      const got = sock.recvBatch();
      for (const d of got) fetcher.onResponse(d.data, now());
      verifyMs += performance.now() - tv;
      batches++;
      if (now() - fetcher.started > 20) throw new Error("gave up after 20 s");
    }
    return {
      verifyMs,
      batches,
      ms: (now() - fetcher.started) * 1000,
      requests: fetcher.requestsSent,
      parts: fetcher.responsesAccepted,
    };
  } finally {
    sock.close();
  }
}

const results = [];
for (let i = 0; i < runs; i++) results.push(await download());
worker.postMessage("stop");
await new Promise((r) => setTimeout(r, 300));
worker.terminate();
for (const r of results) {
  console.log(
    `key download: ${r.parts} parts, ${r.requests} requests, ${r.ms.toFixed(1)} ms ` +
      `(${r.verifyMs.toFixed(1)} ms of it checking parts, in ${r.batches} receive batches)`,
  );
}
const sorted = results.map((r) => r.ms).sort((a, b) => a - b);
console.log(`median ${sorted[Math.floor(sorted.length / 2)].toFixed(1)} ms (target ≤ 50 ms)`);
