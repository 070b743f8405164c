// The server's replay cache, live: as root, our client makes a tunnel to our server across an
// attacker's namespace on the link (tests/helpers/attacker_ns.ts), which captures what the
// client sends with tcpdump. The attacker then replays the client's initiation to the server,
// from the client's own address and port (a raw socket) and from its own address, right away and
// again 5 s later, and replays every tunnel datagram it captured from the client's address.
//
// What must hold: each replayed initiation is a counted `handshake-replay` drop and makes no
// second tunnel (the server's log shows one tunnel up, with the client); each replayed tunnel
// datagram is a counted drop and delivers nothing (a UDP sink behind the server gets each marker
// the client sent exactly once); nothing goes to the attacker; the real tunnel keeps working.
// Bounded: at most 2 + 2 initiations and 300 tunnel datagrams replayed, ~20 s in all.

import assert from "node:assert/strict";
import { type LabProcess, notRootReason, run, sleep, spawn } from "./lab/netns.ts";
import {
  curl,
  describeCurl,
  dropTotals,
  startTcpdump,
  tunnelTarget,
  udpPayloadsFromHexDump,
} from "./helpers/lab_util.ts";
import { TunnelLab } from "./helpers/tunnel_lab.ts";
import {
  CLIENT_PORT_IF,
  interposeAttacker,
  removeAttacker,
  SERVER_PORT_IF,
} from "./helpers/attacker_ns.ts";
import { udpPacket } from "./helpers/udp_packet.ts";
import { HANDSHAKE_BYTES, MSG_INITIATION, MSG_TUNNEL } from "../lib/core/constants.ts";
import { hex } from "../lib/core/bytes.ts";

const PREFIX = "pqts-rpl";
const ATTACKER_NS = `${PREFIX}-atk`;
const ATTACKER_ADDR = "198.18.0.3";
const CRYPTO_PORT = 42424;
const SINK_PORT = 6001;
const MAX_TUNNEL_REPLAYS = 300;
/** The largest UDP payload one unfragmented datagram on the lab's 1500-byte link carries. */
const MAX_SINGLE = 1472;
const skip = notRootReason();
if (skip) console.log(`replay_attack_ns_test: skipped, ${skip}`);

/** Sends what it reads on stdin, one datagram a line: `raw <IPv4 packet hex>` through a raw
 * socket (any source address), or `udp <address> <port> <payload hex>` from its own. */
const SENDER = `
import socket, sys
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for line in sys.stdin:
    f = line.split()
    if f[0] == "raw":
        packet = bytes.fromhex(f[1])
        raw.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
    else:
        udp.sendto(bytes.fromhex(f[3]), (f[1], int(f[2])))
    sent += 1
print("sent", sent)
`;

/** Prints every datagram to UDP port SINK_PORT. */
const SINK = `
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", ${SINK_PORT}))
print("listening", flush=True)
while True:
    data, _ = s.recvfrom(4096)
    print("GOT", data.decode(errors="replace"), flush=True)
`;

async function send(lines: string[]): Promise<number> {
  const r = await run(ATTACKER_NS, ["python3", "-c", SENDER], { stdin: lines.join("\n") + "\n" });
  return Number(r.stdout.match(/^sent (\d+)/m)?.[1]);
}

/** A UDP datagram from the client namespace through the tunnel to the sink. */
async function marker(ns: string, target: string, text: string): Promise<void> {
  await run(ns, [
    "python3",
    "-c",
    `import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"${text}", ` +
    `("${target}", ${SINK_PORT}))`,
  ]);
}

const typeOf = (p: Uint8Array) => (p[0] << 8) | p[1];
const upLines = (log: string) => log.match(/ tunnel \w+ up with [\d.]+:\d+/g) ?? [];
const packetLines = (dump: string) => dump.split("\n").filter((l) => / IP \d/.test(l));

Deno.test({
  name: "replayed initiations and tunnel datagrams: counted drops, one tunnel, nothing delivered",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    let t: TunnelLab | null = null;
    const stops: LabProcess[] = [];
    let failure: unknown = null;
    try {
      t = await TunnelLab.start(PREFIX, {
        prepare: (lab) => interposeAttacker(lab, ATTACKER_NS, ATTACKER_ADDR),
      });
      const { clientNs, serverNs, clientAddr, serverAddr } = t.lab;
      const sink = spawn(serverNs, ["python3", "-u", "-c", SINK], { name: "udp sink" });
      stops.push(sink);
      await sink.waitFor("listening", 10_000);
      // What the client sends to the server's crypto port, as it arrives on the bridge; and
      // anything the server sends to the attacker's address.
      const captured = await startTcpdump(ATTACKER_NS, [
        "-i",
        CLIENT_PORT_IF,
        "-s",
        "0",
        "-x",
        `udp and src host ${clientAddr} and dst host ${serverAddr} and dst port ${CRYPTO_PORT}`,
      ]);
      stops.push(captured);
      const answers = await startTcpdump(ATTACKER_NS, [
        "-i",
        SERVER_PORT_IF,
        `src host ${serverAddr} and dst host ${ATTACKER_ADDR}`,
      ]);
      stops.push(answers);

      // The tunnel, made by an application: ping (tunnelTarget), HTTP, one marker datagram.
      const target = await tunnelTarget(clientNs, "www.lab.test");
      const first = await curl(clientNs, t.url, { maxSec: 20 });
      assert.equal(first.http, "200", `${describeCurl(first)}\n${t.logs()}`);
      await marker(clientNs, target, "marker-1");
      await sink.waitFor("GOT marker-1", 10_000);
      await sleep(300); // tcpdump's last lines
      const dump = captured.output();
      const port = Number(packetLines(dump)[0]?.match(/ IP [\d.]+\.(\d+) > /)?.[1]);
      assert.ok(port > 0, `no datagram of the client captured:\n${dump}`);
      const payloads = udpPayloadsFromHexDump(dump);
      const initiations = payloads.filter((p) =>
        typeOf(p) === MSG_INITIATION && p.length === HANDSHAKE_BYTES
      );
      const tunnel = payloads.filter((p) => typeOf(p) === MSG_TUNNEL && p.length <= MAX_SINGLE)
        .slice(-MAX_TUNNEL_REPLAYS);
      assert.ok(initiations.length >= 1, "the client's initiation was not captured");
      assert.ok(tunnel.length >= 3, `only ${tunnel.length} tunnel datagrams captured`);
      const upsBefore = upLines(t.server!.output());
      assert.equal(upsBefore.length, 1, `tunnels up before the replays: ${upsBefore}`);

      // The initiation again, from the client's address and port and from the attacker's own.
      const init = initiations[0];
      const initiationReplays = [
        `raw ${hex(udpPacket(clientAddr, serverAddr, port, CRYPTO_PORT, init))}`,
        `udp ${serverAddr} ${CRYPTO_PORT} ${hex(init)}`,
      ];
      let sentInitiations = await send(initiationReplays);
      // Every tunnel datagram the client sent, from its address and port.
      const sentTunnel = await send(
        tunnel.map((p) => `raw ${hex(udpPacket(clientAddr, serverAddr, port, CRYPTO_PORT, p))}`),
      );
      await sleep(5000);
      sentInitiations += await send(initiationReplays);
      await sleep(1000);

      // The real tunnel still works, and is the same one.
      const after = await curl(clientNs, `${t.url}after-replays`, { maxSec: 20 });
      assert.equal(after.http, "200", `after the replays: ${describeCurl(after)}`);
      await marker(clientNs, target, "marker-2");
      await sink.waitFor("GOT marker-2", 10_000);
      await sleep(300);
      const ups = upLines(t.server!.output());
      const got = (m: string) => sink.output().split("\n").filter((l) => l === `GOT ${m}`).length;
      const toAttacker = packetLines(answers.output());
      const serverLog = t.server!.output();
      await t.server!.stop("SIGTERM", 10_000, true); // it reports its drop counters as it stops
      const drops = dropTotals(t.server!.output());
      const tunnelDrops = Object.entries(drops).filter(([k]) => k.startsWith("tunnel-"))
        .reduce((s, [, n]) => s + n, 0);
      console.log(
        `FIGURES replay: captured ${initiations.length} initiation(s) and ${tunnel.length} ` +
          `tunnel datagrams of the client (port ${port}); replayed ${sentInitiations} ` +
          `initiations (half from ${clientAddr}, half from ${ATTACKER_ADDR}, 0 and 5 s after) and ` +
          `${sentTunnel} tunnel datagrams; tunnels up ${ups.length} (${ups.join("; ")}); ` +
          `markers delivered ${got("marker-1")}+${got("marker-2")}; to the attacker ` +
          `${toAttacker.length}; server drops ${JSON.stringify(drops)}`,
      );
      assert.equal(sentInitiations, 4);
      assert.equal(sentTunnel, tunnel.length);
      // Each replayed initiation: refused by the replay cache, counted. (A retransmission by
      // the client itself of the same initiation would be one more.)
      const replays = drops["handshake-replay"] ?? 0;
      assert.ok(
        replays >= sentInitiations && replays <= sentInitiations + initiations.length - 1,
        `handshake-replay drops ${replays} for ${sentInitiations} replayed initiations`,
      );
      assert.deepEqual(ups, upsBefore, "the replays made or moved a tunnel");
      assert.ok(!serverLog.includes(`up with ${ATTACKER_ADDR}`), "a tunnel with the attacker");
      // Each replayed tunnel datagram: a counted drop (its packet key was used and wiped), and
      // nothing delivered twice.
      assert.ok(
        (drops["tunnel-no-key"] ?? 0) + (drops["tunnel-auth"] ?? 0) >= sentTunnel,
        `${sentTunnel} tunnel datagrams replayed, drops ${JSON.stringify(drops)}`,
      );
      assert.ok(tunnelDrops <= sentTunnel + 20, "tunnel drops beyond the replays");
      assert.equal(got("marker-1"), 1, "the replayed marker was delivered again");
      assert.equal(got("marker-2"), 1);
      assert.deepEqual(toAttacker, [], "the server answered the attacker");
    } catch (e) {
      failure = e;
      if (t) console.error(t.logs(60));
    }
    for (const p of stops.reverse()) await p.stop().catch(() => {});
    try {
      if (t) await t.stop(failure);
      else if (failure) throw failure;
    } finally {
      await removeAttacker(ATTACKER_NS);
    }
  },
});
