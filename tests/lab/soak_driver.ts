// The load of the soak test (tests/lab/soak_test.ts), run inside the client namespace: N of
// our client devices (lib/client/device.ts, the real client logic, with the real crypto
// worker), each on a UDP socket of its own, so the server daemon sees N clients and keeps N
// tunnels. Each tunnel alternates between busy spells (echo requests through the tunnel to a
// UDP echo server behind the server's TUN device, one outstanding at a time) and idle spells
// long enough to cross epochs, cookie evictions and key erasure. Prints "SOAK {...}" counters
// every 5 s and at the end.
//
//   deno run --unstable-net --allow-net --allow-read=tests/fixtures,wasm,lib,ffi \
//     tests/lab/soak_driver.ts <server addr> <client addr> <seconds> <tunnels> <echo port>

import { fixture } from "../fixtures.ts";
import { CryptoPool } from "../../lib/runtime/crypto_pool.ts";
import { StderrLogger } from "../../lib/runtime/log.ts";
import { ClientDevice, type KeyChannel } from "../../lib/client/device.ts";
import { DropCounters } from "../../lib/core/log.ts";
import { KeyTree } from "../../lib/core/keytree.ts";
import { ipv4ToNumber, numberToIpv4 } from "../../lib/core/ip.ts";
import { udpPacket } from "../helpers/device_net.ts";
import { Prng } from "../helpers/prng.ts";

const [serverAddr, clientAddr, secondsArg, tunnelsArg, echoPortArg] = Deno.args;
const seconds = Number(secondsArg);
const tunnels = Number(tunnelsArg);
const echoPort = Number(echoPortArg);
const server = ipv4ToNumber(serverAddr);
const tree = KeyTree.build(fixture("mceliece_pk"), fixture("x25519_pk"));
const pool = await CryptoPool.start();
const log = new StderrLogger("soak", "warn");
const rng = new Prng(10);
const now = () => performance.now() / 1000;
const stats = { sent: 0, echoed: 0, timedOut: 0, late: 0, tunnelsUp: 0, handshakes: 0 };

interface Tunnel {
  device: ClientDevice;
  sock: Deno.DatagramConn;
  internal: number;
  outstanding: { id: number; at: number } | null;
  nextId: number;
  busyUntil: number;
  idleUntil: number;
}

const ME = ipv4ToNumber("10.43.0.1");

function makeTunnel(i: number): Tunnel {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: clientAddr, port: 0 });
  const t = {} as Tunnel;
  const device = new ClientDevice(
    {
      tunAddress: ME,
      prefix: 16,
      defaultCryptoPort: 42424,
      defaultKeyPort: 42425,
      keyFetchSeconds: 30,
      precomputed: 1,
    },
    {
      sendUdp: (data, host, port) => {
        sock.send(data.slice(), { transport: "udp", hostname: numberToIpv4(host), port })
          .catch(() => {});
      },
      writeTun: (p) => onEcho(t, p),
      openKeyChannel: (host, port, deliver): KeyChannel => {
        const ch = Deno.listenDatagram({ transport: "udp", hostname: clientAddr, port: 0 });
        let open = true;
        (async () => {
          try {
            for await (const [d] of ch) if (open) deliver(d);
          } catch { /* closed */ }
        })();
        return {
          send: (d) =>
            void ch.send(d, { transport: "udp", hostname: numberToIpv4(host), port }).catch(
              () => {},
            ),
          close: () => {
            open = false;
            ch.close();
          },
        };
      },
      resolveTxt: () => Promise.resolve([]),
      wakeAt: () => {},
    },
    {
      registerMcEliecePk: (pk) => pool.registerMcEliecePublicKey(pk),
      unregisterMcEliecePk: (id) => pool.unregisterMcEliecePublicKey(id),
      mcelieceEncap: (id) => pool.mcelieceEncap(id),
      sntrupEncap: (pk) => pool.sntrupEncap(pk),
    },
    log,
    new DropCounters(),
    now,
    (n) => crypto.getRandomValues(new Uint8Array(n)),
  );
  Object.assign(t, {
    device,
    sock,
    internal: device.announce({ keyHash: tree.root }, server, `soak${i}.lab.test`)!,
    outstanding: null,
    nextId: 1,
    busyUntil: 0,
    // The 50 tunnels share one address, and the server admits 3 initiations a second per
    // address (a burst of 6): their first handshakes are spread so as to stay within that.
    idleUntil: now() + i * 0.4 + rng.next() * 0.2,
  });
  (async () => {
    try {
      for await (const [d, from] of sock) {
        device.onDatagram(d, server, (from as Deno.NetAddr).port);
      }
    } catch { /* closed */ }
  })();
  return t;
}

function onEcho(t: Tunnel, p: Uint8Array): void {
  const text = new TextDecoder().decode(p.subarray(28));
  const id = Number(text.split(" ")[1]);
  if (t.outstanding && t.outstanding.id === id) {
    stats.echoed++;
    t.outstanding = null;
  } else {
    stats.late++;
  }
}

function send(t: Tunnel): void {
  const id = t.nextId++;
  const payload = new TextEncoder().encode(`echo ${id} ${"x".repeat(200)}`);
  const packet = udpPacket(ME, t.internal, payload, [5000, echoPort]);
  t.outstanding = { id, at: now() };
  stats.sent++;
  t.device.onTunPacket(packet);
}

const all = Array.from({ length: tunnels }, (_, i) => makeTunnel(i));
const end = now() + seconds;
let lastReport = 0;
while (now() < end) {
  const t0 = now();
  for (const t of all) {
    t.device.tick();
    if (t.outstanding && t0 - t.outstanding.at > 3) {
      stats.timedOut++;
      t.outstanding = null;
    }
    if (t0 >= t.idleUntil && t.busyUntil < t.idleUntil) {
      // a busy spell of 3-15 s, then idle 5-70 s (past epochs, cookies, erasure)
      t.busyUntil = t0 + 3 + rng.next() * 12;
      t.idleUntil = t.busyUntil + 5 + rng.next() * 65;
    }
    if (t0 < t.busyUntil && !t.outstanding) send(t);
  }
  if (t0 - lastReport >= 5) {
    lastReport = t0;
    stats.tunnelsUp = all.filter((t) => [...t.device.servers][0]?.state === "up").length;
    stats.handshakes = all.reduce((a, t) => a + ([...t.device.servers][0]?.tunnels ?? 0), 0);
    console.log(`SOAK ${JSON.stringify(stats)}`);
  }
  await new Promise((r) => setTimeout(r, 50));
}
// let the last echoes come home
await new Promise((r) => setTimeout(r, 3000));
for (const t of all) if (t.outstanding) stats.timedOut++;
stats.handshakes = all.reduce((a, t) => a + ([...t.device.servers][0]?.tunnels ?? 0), 0);
console.log(`SOAK ${JSON.stringify(stats)}`);
console.log("SOAK DONE");
for (const t of all) {
  t.device.close();
  t.sock.close();
}
await pool.close();
Deno.exit(0);
