// The on-path attacker of tests/live_tunnel_attack_test.ts, run as root in its own namespace,
// which bridges the client's and the server's links (br0 over the ports --cli-if and --srv-if).
// It taps both ports (AF_PACKET) and so learns the live tunnel id, the client's port and the
// counters in use. Once the control file says "attack", it injects, at a bounded rate each:
//   replay-spoofed  recorded client datagrams, byte for byte, to the server
//   replay-own      the same from the attacker's own address (198.18.0.3): a server that took
//                   one would move the client's tunnel there
//   forge-edge      the live tid with counters at the far edge of the server's receive window
//                   (the expensive case: each new edge costs key derivations), next epochs
//   forge-random    the live tid with random epochs and counters
//   to-client       recorded server datagrams replayed to the client, and forgeries in the
//                   server's name (edge and random), from the server's address
// Every forgery carries a broken tag. Frames go straight out of a bridge port, so the server
// and the client see them exactly as if the other had sent them.
//
// It counts, per stretch the control file names ("calm-echo", "attack-echo", ...), the tunnel
// datagrams each side sent (its own: injected ones are not counted) and anything either sends
// to an address other than the other's, and prints one RESULT line as JSON when the control
// file says "stop".
//
//   deno run --allow-ffi=<libc> --allow-read=<control> tunnel_attacker.ts \
//     --config '{"client":"198.18.0.2",...}'

import { libc } from "../../ffi/libc.ts";
import { MSG_TUNNEL, TUNNEL_OVERHEAD } from "../../lib/core/constants.ts";
import { RECEIVE_WINDOW } from "../../lib/core/session.ts";
import { udpPacket } from "./udp_packet.ts";
import { Prng } from "./prng.ts";

interface Config {
  client: string;
  server: string;
  attacker: string;
  port: number;
  cliIf: string;
  srvIf: string;
  control: string;
  /** Datagrams per second of each kind during the attack. */
  rates: Record<Kind, number>;
  /** At most this many of each kind in all. */
  maxPerKind: number;
}

type Kind = "replay-spoofed" | "replay-own" | "forge-edge" | "forge-random" | "to-client";
const KINDS: Kind[] = ["replay-spoofed", "replay-own", "forge-edge", "forge-random", "to-client"];
/**
 * What the control file says: a label for the counters of this stretch; "attack..." injects
 * ("attack-echo", "attack-tcp"), anything else only taps; "stop" reports and ends.
 */
type Phase = string;
const config: Config = JSON.parse(Deno.args[Deno.args.indexOf("--config") + 1]);
const rng = new Prng(8);

const AF_PACKET = 17;
const SOCK_RAW = 3;
const ETH_P_ALL = 0x0003;
const ETH_P_IP = 0x0800;
const SOL_SOCKET = 1;
const SO_RCVBUFFORCE = 33;
const SOL_PACKET = 263;
const PACKET_IGNORE_OUTGOING = 23;
const MSG_DONTWAIT = 0x40;
const PACKET_OUTGOING = 4;
const MSG_TRUNC = 0x20;
/** An Ethernet frame of one datagram at MTU 1500; longer ones are segmentation offloads. */
const MAX_FRAME = 1514;

const htons = (v: number) => ((v & 0xff) << 8) | (v >> 8);

const SIOCGIFHWADDR = 0x8927;
const SIOCGIFINDEX = 0x8933;

/** struct ifreq of interface `name` after `request` (its union starts at byte 16). */
function ifreq(name: string, request: number): DataView {
  const req = new Uint8Array(40);
  req.set(new TextEncoder().encode(name));
  const fd = libc().socket(AF_PACKET, SOCK_RAW, 0);
  ok("socket", fd);
  try {
    ok(`ioctl ${name}`, libc().ioctl(fd, BigInt(request), req));
  } finally {
    libc().close(fd);
  }
  return new DataView(req.buffer);
}

function ifindex(name: string): number {
  return ifreq(name, SIOCGIFINDEX).getInt32(16, true);
}

function mac(name: string): Uint8Array {
  const v = ifreq(name, SIOCGIFHWADDR);
  return new Uint8Array(v.buffer.slice(18, 24));
}

function sockaddrLl(index: number, protocol: number): Uint8Array<ArrayBuffer> {
  const a = new Uint8Array(20);
  const v = new DataView(a.buffer);
  v.setUint16(0, AF_PACKET, true);
  v.setUint16(2, htons(protocol), true);
  v.setInt32(4, index, true);
  return a;
}

function ok(what: string, r: number | bigint): void {
  if (Number(r) < 0) throw new Error(`${what} failed`);
}

/** A tap on one port: every frame that arrives on it (not those leaving). */
function tap(name: string): number {
  const fd = libc().socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  ok("socket", fd);
  const one = new Uint8Array(new Int32Array([1]).buffer);
  ok("ignore outgoing", libc().setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, one, 4));
  const size = new Uint8Array(new Int32Array([8 << 20]).buffer);
  ok("rcvbuf", libc().setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, size, 4));
  ok("bind", libc().bind(fd, sockaddrLl(ifindex(name), ETH_P_ALL), 20));
  return fd;
}

/** A socket that only sends (protocol 0: it receives nothing). */
const sender = libc().socket(AF_PACKET, SOCK_RAW, 0);
ok("socket", sender);
const toServer = sockaddrLl(ifindex(config.srvIf), ETH_P_IP);
const toClient = sockaddrLl(ifindex(config.cliIf), ETH_P_IP);
const cliTap = tap(config.cliIf);
const srvTap = tap(config.srvIf);
const ownMac = mac("br0");

const quad = (b: Uint8Array, at: number) => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;

/** An IPv4/UDP frame: its addresses and the UDP payload, or null. */
function parse(f: Uint8Array) {
  if (f.length < 42 || ((f[12] << 8) | f[13]) !== ETH_P_IP || f[14] >> 4 !== 4) return null;
  const hl = (f[14] & 15) * 4;
  const proto = f[23];
  const src = quad(f, 26);
  const dst = quad(f, 30);
  if (proto !== 17) return { src, dst, udp: null };
  const u = 14 + hl;
  const sport = (f[u] << 8) | f[u + 1];
  const dport = (f[u + 2] << 8) | f[u + 3];
  return { src, dst, udp: { sport, dport, payload: f.subarray(u + 8) } };
}

function isTunnel(p: Uint8Array): boolean {
  return p.length >= TUNNEL_OVERHEAD && ((p[0] << 8) | p[1]) === MSG_TUNNEL;
}

const tidHex = (p: Uint8Array) =>
  Array.from(p.subarray(2, 34), (b) => b.toString(16).padStart(2, "0")).join("");

/** What one side of the tunnel sent: recent datagrams, the newest (epoch, counter). */
class Side {
  frames: Uint8Array[] = [];
  next = 0;
  epoch = 0;
  ctr = 0;
  port = 0;
  /** A frame seen; kept for replay when it holds one whole datagram (`single`). */
  record(f: Uint8Array, payload: Uint8Array, port: number, single: boolean): void {
    const v = new DataView(payload.buffer, payload.byteOffset);
    const epoch = v.getUint16(34);
    const ctr = v.getUint32(36);
    if (epoch > this.epoch || (epoch === this.epoch && ctr > this.ctr)) {
      this.epoch = epoch;
      this.ctr = ctr;
    }
    this.port = port;
    if (!single) return;
    if (this.frames.length < 512) this.frames.push(f.slice());
    else this.frames[rng.int(512)] = f.slice();
  }
  /** The recorded frames in turn. */
  replay(): Uint8Array {
    return this.frames[this.next++ % this.frames.length];
  }
}

const fromClient = new Side();
const fromServer = new Side();
const tids = new Set<string>();
const blank = () => ({
  clientTunnel: 0,
  clientOther: 0,
  serverToClient: 0,
  serverToClientOther: 0,
  serverToElsewhere: 0,
  clientToElsewhere: 0,
});
const seen: Record<string, ReturnType<typeof blank>> = {};
const counters = () => seen[phase] ??= blank();
const attacking = (p: Phase) => p.startsWith("attack");
const sent = Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<Kind, number>;
const tried = Object.fromEntries(KINDS.map((k) => [k, 0])) as Record<Kind, number>;
let sendFailures = 0;
let phase: Phase = "setup";
let attackStarted = 0;
let attackSeconds = 0;

const frame = new Uint8Array(new ArrayBuffer(2048));
const from = new Uint8Array(new ArrayBuffer(20));
const fromLen = new Uint8Array(new ArrayBuffer(4));

function drain(fd: number, handle: (f: Uint8Array, single: boolean) => void): void {
  for (let i = 0; i < 4096; i++) {
    new DataView(fromLen.buffer).setUint32(0, 20, true);
    // MSG_TRUNC: the frame's whole length, even when it did not fit
    const n = Number(
      libc().recvfrom(fd, frame, 2048n, MSG_DONTWAIT | MSG_TRUNC, from, fromLen),
    );
    if (n <= 0) return;
    if (from[10] === PACKET_OUTGOING) continue;
    handle(frame.subarray(0, Math.min(n, 2048)), n <= MAX_FRAME);
  }
}

/** A frame arriving from the client's side. */
function onClientFrame(f: Uint8Array, single: boolean): void {
  const p = parse(f);
  if (!p || p.src !== config.client) return;
  const c = counters();
  if (p.dst !== config.server) return void c.clientToElsewhere++;
  if (p.udp?.dport === config.port && isTunnel(p.udp.payload)) {
    c.clientTunnel++;
    tids.add(tidHex(p.udp.payload));
    fromClient.record(f, p.udp.payload, p.udp.sport, single);
  } else c.clientOther++;
}

/** A frame arriving from the server's side. */
function onServerFrame(f: Uint8Array, single: boolean): void {
  const p = parse(f);
  if (!p || p.src !== config.server) return;
  const c = counters();
  if (p.dst !== config.client) return void c.serverToElsewhere++;
  if (p.udp?.sport === config.port && isTunnel(p.udp.payload)) {
    c.serverToClient++;
    fromServer.record(f, p.udp.payload, p.udp.dport, single);
  } else c.serverToClientOther++;
}

/**
 * A copy of recorded frame `f`, its UDP payload as it was or with a new tunnel header and a
 * broken tag, maybe from another address. The checksums are computed anew: the tap sees
 * frames with checksum offload, whose UDP checksum field is not filled in yet.
 */
function forge(
  f: Uint8Array,
  o: { srcMac?: Uint8Array; src?: string; epoch?: number; ctr?: number; breakTag: boolean },
): Uint8Array {
  const p = parse(f)!;
  const payload = p.udp!.payload.slice();
  const v = new DataView(payload.buffer);
  if (o.epoch !== undefined) v.setUint16(34, o.epoch);
  if (o.ctr !== undefined) v.setUint32(36, o.ctr >>> 0);
  if (o.breakTag) payload[payload.length - 1] ^= 0x55;
  const ip = udpPacket(o.src ?? p.src, p.dst, p.udp!.sport, p.udp!.dport, payload);
  const out = new Uint8Array(14 + ip.length);
  out.set(f.subarray(0, 14));
  if (o.srcMac) out.set(o.srcMac, 6);
  out.set(ip, 14);
  return out;
}

/** A forgery with a counter at the far edge of the receive window, or in a next epoch. */
function edge(side: Side): { epoch: number; ctr: number } {
  const r = rng.int(4);
  if (r === 0) return { epoch: side.epoch + 1 + rng.int(4), ctr: 89 - rng.int(18) };
  return { epoch: side.epoch, ctr: side.ctr + RECEIVE_WINDOW - 1 - rng.int(18) };
}

function random(): { epoch: number; ctr: number } {
  return { epoch: rng.int(65536), ctr: rng.int(2 ** 32) };
}

function datagram(kind: Kind): [Uint8Array, Uint8Array] {
  switch (kind) {
    case "replay-spoofed":
      return [forge(fromClient.replay(), { breakTag: false }), toServer];
    case "replay-own":
      return [
        forge(fromClient.replay(), { srcMac: ownMac, src: config.attacker, breakTag: false }),
        toServer,
      ];
    case "forge-edge":
      return [forge(fromClient.replay(), { ...edge(fromClient), breakTag: true }), toServer];
    case "forge-random":
      return [forge(fromClient.replay(), { ...random(), breakTag: true }), toServer];
    case "to-client": {
      const f = fromServer.replay();
      const r = rng.int(3);
      if (r === 0) return [forge(f, { breakTag: false }), toClient];
      const header = r === 1 ? edge(fromServer) : random();
      return [forge(f, { ...header, breakTag: true }), toClient];
    }
  }
}

function send(kind: Kind): void {
  tried[kind]++;
  const [f, to] = datagram(kind);
  const r = Number(libc().sendto(sender, f, BigInt(f.length), MSG_DONTWAIT, to, 20));
  if (r === f.length) sent[kind]++;
  else sendFailures++;
}

function readPhase(): Phase {
  try {
    return Deno.readTextFileSync(config.control).trim() || phase;
  } catch {
    return phase; // not written yet
  }
}

console.log(`tapping ${config.cliIf} and ${config.srvIf}`);
let lastRead = 0;
while (phase !== "stop") {
  drain(cliTap, onClientFrame);
  drain(srvTap, onServerFrame);
  const now = performance.now();
  if (now - lastRead > 20) {
    lastRead = now;
    const p = readPhase();
    if (attacking(p) && attackStarted === 0) {
      if (fromClient.frames.length === 0 || fromServer.frames.length === 0) {
        console.log("nothing recorded yet: cannot attack");
        Deno.exit(3);
      }
      attackStarted = now;
      console.log(`ATTACKING tids ${[...tids].map((t) => t.slice(0, 12)).join(",")}`);
    }
    if (!attacking(p) && attacking(phase)) {
      attackSeconds = (now - attackStarted) / 1000;
      console.log("SETTLING");
    }
    phase = p;
  }
  if (attacking(phase)) {
    const elapsed = (now - attackStarted) / 1000;
    for (const kind of KINDS) {
      const due = Math.min(config.maxPerKind, Math.floor(config.rates[kind] * elapsed));
      while (tried[kind] < due) send(kind);
    }
  }
  await new Promise((r) => setTimeout(r, 1));
}
drain(cliTap, onClientFrame);
drain(srvTap, onServerFrame);

console.log(
  `RESULT ${
    JSON.stringify({
      tids: [...tids],
      clientPort: fromClient.port,
      attackSeconds,
      sent,
      sendFailures,
      seen,
    })
  }`,
);
