// The server's packet thread, per handshake, without the crypto workers: `deno task
// bench:server-path [--handshakes N] [--max-peers N]`.
//
// A ServerDevice (lib/server/device.ts) as the daemon builds it, on a fake clock, whose responder
// answers at once with fresh roots instead of decapsulating (the daemon's workers do that part,
// on other threads). Per handshake: an initiation, its 0-RTT ICMP echo right behind it (held,
// then delivered when the handshake finishes), the host's echo reply back into the tunnel. With
// more handshakes than the table holds, every new one evicts the idlest tunnel with a cookie, as
// a server under a long handshake flood does. It prints µs per handshake before and after the
// table is full: what the packet thread pays per handshake (its collector included), which the
// workers then cannot use. The bench's own client side (random initiations, sealing the echoes)
// is in the figure too: ~15 µs of it (--cpu-prof).

import { parseArgs } from "node:util";
import { fixture } from "../tests/fixtures.ts";
import { icmpEcho, randomInitiation } from "../tests/helpers/initiations.ts";
import { ServerDevice } from "../lib/server/device.ts";
import type { ResponderCrypto, RespondReply } from "../lib/server/device.ts";
import { EphemeralKeyStore } from "../lib/core/ephemeral.ts";
import { CookieKeyring } from "../lib/core/cookie.ts";
import { TunnelSession } from "../lib/core/session.ts";
import { ipv4ToNumber } from "../lib/core/ip.ts";
import type { Logger } from "../lib/core/log.ts";
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    handshakes: { type: "string", default: "100000" },
    "max-peers": { type: "string", default: "65536" },
  },
});
const HANDSHAKES = Number(values.handshakes);
const MAX_PEERS = Number(values["max-peers"]);
if (!(HANDSHAKES >= 1000) || !(MAX_PEERS >= 16)) {
  console.error("--handshakes must be ≥ 1000 and --max-peers ≥ 16");
  Deno.exit(2);
}

const aead = installAeadBackend();
const quiet: Logger = {
  error: () => {},
  warn: () => {},
  info: () => {},
  debug: () => {},
  debugEnabled: false,
};

/** Answers each handshake with fresh random roots at the end of the round, as the pool does. */
class InstantResponder implements ResponderCrypto {
  readonly waiting: (() => void)[] = [];
  /** The roots of the handshake answered last, for the client side of the bench. */
  next: { tid: Uint8Array; i2r: Uint8Array; r2i: Uint8Array } | null = null;

  respondDeferred(
    _initiation: Uint8Array,
    _slots: number[],
    done: (reply: RespondReply | null) => void,
  ): boolean {
    const r = this.next!;
    this.waiting.push(() =>
      done({ ok: true, tid: r.tid, i2r: r.i2r.slice(), r2i: r.r2i.slice(), slot: 0 })
    );
    return true;
  }

  finish(): void {
    for (const f of this.waiting.splice(0)) f();
  }
}

const clock = { t: 1000, wall: 1_800_000_000 };
const ephemeral = new EphemeralKeyStore();
for (const slot of ephemeral.due(clock.wall)) {
  ephemeral.add({
    slot,
    sntrupPk: new Uint8Array(1158),
    sntrupSk: new Uint8Array(1763),
    x25519Pk: new Uint8Array(32),
    x25519Sk: new Uint8Array(32),
  });
}
let toTun: Uint8Array | null = null;
let sent = 0;
const responder = new InstantResponder();
const device = new ServerDevice(
  {
    tunAddress: ipv4ToNumber("10.42.0.1"),
    prefix: 16,
    hostAddress: ipv4ToNumber("198.18.0.1"),
    maxPeers: MAX_PEERS,
    maxPendingHandshakes: 1 << 20,
    handshakeQueue: 1 << 20,
    replayHashKey: crypto.getRandomValues(new Uint8Array(8)),
  },
  {
    sendUdp: () => void sent++,
    writeTun: (p) => void (toTun = p.slice()),
  },
  responder,
  ephemeral,
  new CookieKeyring(fixture("session_key"), new Uint8Array(32)),
  quiet,
  { mono: () => clock.t, wall: () => clock.wall },
);

const SERVER = ipv4ToNumber("198.18.0.1");
const CLIENTS = ipv4ToNumber("100.64.0.0");

/** The host's answer to an echo request that went into the TUN device. */
function echoReply(request: Uint8Array): Uint8Array {
  const p = request.slice();
  p.set(request.subarray(16, 20), 12);
  p.set(request.subarray(12, 16), 16);
  p[20] = 0; // echo reply; the checksum is not what this bench measures
  return p;
}

/** One handshake as the packet thread sees it; false when the echo did not come back. */
function handshake(j: number): boolean {
  const host = CLIENTS + (j % 60000);
  const port = 40000 + Math.floor(j / 60000);
  const tid = crypto.getRandomValues(new Uint8Array(32));
  const i2r = crypto.getRandomValues(new Uint8Array(32));
  const r2i = crypto.getRandomValues(new Uint8Array(32));
  responder.next = { tid, i2r, r2i };
  const client = TunnelSession.create(tid, i2r.slice(), r2i.slice(), clock.t);
  const echo = client.sealPacket(icmpEcho(host, SERVER, j, 0), clock.t);
  toTun = null;
  device.onDatagram(randomInitiation(), host, port);
  device.onDatagram(echo, host, port);
  responder.finish();
  const request = toTun as Uint8Array | null;
  if (request === null) return false;
  device.onTunPacket(echoReply(request));
  client.close();
  return true;
}

/** Runs `count` handshakes from `first`; µs per handshake. */
function phase(first: number, count: number): number {
  const start = performance.now();
  let lost = 0;
  for (let j = first; j < first + count; j++) {
    if (!handshake(j)) lost++;
    clock.t += 1 / 8000; // 8000 handshakes a second, 60 000 addresses: no rate limit meets them
    if ((j & 1023) === 0) device.tick(new Uint8Array(32));
  }
  if (lost > 0) throw new Error(`${lost} echoes did not come back`);
  return ((performance.now() - start) * 1000) / count;
}

const warm = Math.min(MAX_PEERS, HANDSHAKES) / 2;
phase(0, 2000); // warm up the JIT
const filling = phase(2000, Math.floor(warm) - 2000);
const full = Math.max(0, HANDSHAKES - MAX_PEERS);
for (let j = Math.floor(warm); j < MAX_PEERS; j += 10000) {
  phase(j, Math.min(10000, MAX_PEERS - j));
}
const evicting = full > 0 ? phase(MAX_PEERS, full) : null;
console.log(
  `server packet thread per handshake (AEAD ${aead}, crypto excluded), ${device.peers.size} peers ` +
    `at the end:\n  table filling: ${filling.toFixed(1)} µs\n  table full (each evicts one): ` +
    (evicting === null ? "not reached" : `${evicting.toFixed(1)} µs`) +
    `\n  datagrams sent: ${sent}`,
);
device.close();
