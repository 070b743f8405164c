// A fault-injecting UDP relay (this kernel has no netem): it listens on `--listen` at each
// port of `--ports` (front:back pairs), forwards every datagram to the back port at
// `--upstream` from a socket of its own per client (so replies find their way back), and on the way loses, duplicates, delays and
// reorders datagrams in both directions. The faults come from a JSON control file the test
// may rewrite at any time (read every 100 ms):
//   {"loss": 0.02, "duplicate": 0.01, "reorder": 0.02, "delayMs": 10, "jitterMs": 8}
// `reorder` is the share of datagrams delayed by an extra 0..jitterMs, which puts them behind
// later ones. Seeded, so a run's faults are reproducible. Prints its counters every second and
// when stopped ("RELAY {...}").
//
//   deno run --allow-net --allow-read=<control file> --unstable-net tests/helpers/udp_relay.ts \
//     --listen 198.18.0.3 --upstream 198.18.0.1 --ports 42424:42444 --control f.json --seed 1

import { Prng } from "./prng.ts";

interface Faults {
  loss: number;
  duplicate: number;
  reorder: number;
  delayMs: number;
  jitterMs: number;
}

const args = new Map<string, string>();
for (let i = 0; i < Deno.args.length; i += 2) {
  args.set(Deno.args[i].replace(/^--/, ""), Deno.args[i + 1]);
}
const listen = args.get("listen")!;
const upstream = args.get("upstream")!;
const ports = args.get("ports")!.split(",").map((p) => p.split(":").map(Number));
const control = args.get("control")!;
const rng = new Prng(Number(args.get("seed") ?? 1));
/** Client conversations kept per port; the oldest is dropped beyond this. */
const MAX_CLIENTS = 256;

let faults: Faults = { loss: 0, duplicate: 0, reorder: 0, delayMs: 0, jitterMs: 0 };
const stats = { in: 0, out: 0, lost: 0, duplicated: 0, reordered: 0, errors: 0 };

async function readControl(): Promise<void> {
  try {
    faults = { ...faults, ...JSON.parse(await Deno.readTextFile(control)) };
  } catch { /* being rewritten: keep the last faults */ }
}

/** Sends `data` through the faults: maybe not, maybe twice, later. */
function forward(send: (d: Uint8Array) => Promise<unknown>, data: Uint8Array): void {
  stats.in++;
  if (rng.chance(faults.loss)) {
    stats.lost++;
    return;
  }
  const copies = rng.chance(faults.duplicate) ? 2 : 1;
  if (copies === 2) stats.duplicated++;
  for (let i = 0; i < copies; i++) {
    let delay = faults.delayMs;
    if (rng.chance(faults.reorder)) {
      delay += 1 + rng.next() * faults.jitterMs;
      stats.reordered++;
    }
    const go = () => {
      stats.out++;
      send(data).catch((e) => {
        if (stats.errors++ < 3) console.log(`relay send failed: ${e}`);
      });
    };
    if (delay > 0) setTimeout(go, delay);
    else go();
  }
}

async function relayPort([port, backPort]: number[]): Promise<void> {
  const front = Deno.listenDatagram({ transport: "udp", hostname: listen, port });
  const clients = new Map<string, Deno.DatagramConn>();
  for await (const [data, from] of front) {
    const addr = from as Deno.NetAddr;
    const key = `${addr.hostname}:${addr.port}`;
    let back = clients.get(key);
    if (!back) {
      if (clients.size >= MAX_CLIENTS) {
        const [oldKey, old] = clients.entries().next().value!;
        old.close();
        clients.delete(oldKey);
      }
      const conn = Deno.listenDatagram({ transport: "udp", hostname: listen, port: 0 });
      back = conn;
      clients.set(key, conn);
      (async () => {
        try {
          for await (const [reply] of conn) {
            forward((d) => front.send(d, addr), reply);
          }
        } catch { /* closed */ }
      })();
    }
    const to: Deno.NetAddr = { transport: "udp", hostname: upstream, port: backPort };
    const conn = back;
    forward((d) => conn.send(d, to), data);
  }
}

await readControl();
setInterval(readControl, 100);
setInterval(() => console.log(`RELAY ${JSON.stringify({ ...stats, faults })}`), 1000);
Deno.addSignalListener("SIGTERM", () => {
  console.log(`RELAY ${JSON.stringify({ ...stats, faults })}`);
  Deno.exit(0);
});
console.log(`relaying ${listen} to ${upstream}, ports ${ports.map((p) => p.join("->"))}`);
await Promise.all(ports.map(relayPort));
