// Cost per queued DNS answer: the fast path (an ordinary answer, no "pq1" bytes), the full
// rewrite of an announcement, and the per-packet address rewrite of the tunnel.
import dnsPacket from "dns-packet";
import { DnsRewriter } from "../lib/core/dns_rewrite.ts";
import { ipv4ToNumber } from "../lib/core/ip.ts";
import { rewriteAddresses } from "../lib/core/nat.ts";
import { formatPq1Label, parsePq1Name } from "../lib/core/names.ts";
import { udpPacket } from "../tests/helpers/udp_packet.ts";
import { maximalAnswer } from "../tests/helpers/dns_answers.ts";

const PQ_NAME = `${formatPq1Label(new Uint8Array(32).fill(7))}.lab.test`;

function wrap(msg: object): Uint8Array {
  return udpPacket("198.18.0.53", "198.18.0.2", 53, 40000, new Uint8Array(dnsPacket.encode(msg)));
}

/** A recursive resolver's answer to an A query for `name`. */
function answer(id: number, name: string, answers: object[]): Uint8Array {
  return wrap({
    type: "response",
    id,
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE,
    questions: [{ name, type: "A" }],
    answers,
  });
}

const plain = answer(1, "www.example.org", [
  { name: "www.example.org", type: "CNAME", ttl: 300, data: "cdn.example.net" },
  { name: "cdn.example.net", type: "A", ttl: 60, data: "198.18.0.10" },
  { name: "cdn.example.net", type: "A", ttl: 60, data: "198.18.0.11" },
]);
const announced = answer(2, "www.lab.test", [
  { name: "www.lab.test", type: "CNAME", ttl: 300, data: PQ_NAME },
  { name: PQ_NAME, type: "A", ttl: 300, data: "198.18.0.1" },
]);

const internal = ipv4ToNumber("10.43.0.2");
const rewriter = new DnsRewriter({ parseName: parsePq1Name, assign: () => internal });

export const maximal = maximalAnswer(PQ_NAME);
if (rewriter.process(maximal).action !== "rewrite") throw new Error("maximal answer missed");
if (rewriter.process(plain).action !== "pass") throw new Error("plain answer not passed");
if (rewriter.process(announced).action !== "rewrite") throw new Error("announcement missed");

Deno.bench("plain DNS answer (fast path)", { baseline: true }, () => {
  rewriter.process(plain);
});

Deno.bench("pq1 answer (walk, assign, edit in place, checksum)", () => {
  rewriter.process(announced);
});

Deno.bench(
  `maximal answer (${maximal.length} bytes, ${(maximal.length - 90) >> 4} A records)`,
  () => {
    rewriter.process(maximal);
  },
);

const tcp = new Uint8Array(1400);
tcp.set([0x45, 0, 0x05, 0x78, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 43, 0, 1, 198, 18, 0, 1]);
const a = ipv4ToNumber("10.42.0.9"), b = ipv4ToNumber("10.42.0.1");
const c = ipv4ToNumber("10.43.0.1"), d = ipv4ToNumber("198.18.0.1");
let flip = false;
Deno.bench("rewriteAddresses, 1400-byte TCP packet", () => {
  flip = !flip;
  rewriteAddresses(tcp, flip ? a : c, flip ? b : d);
});
