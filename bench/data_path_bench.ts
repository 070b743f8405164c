// Both ends of a tunnel's data path in one process, without IO: what one TCP segment costs the
// CPU between the sender's TUN read and the receiver's TUN write. A 64 kB TSO frame (44 segments
// of 1360 bytes, MTU 1400) is cut (splitFrame), each packet sealed into a send slot
// (DataPath.fromTun, the real session and AEAD), opened where it lies (DataPath.fromNetwork,
// address rewrite, partial checksum) and joined again (TcpCoalescer). The system calls are left
// out: bench:tunnel measures them.
//
//   deno bench --allow-read=lib,ffi --allow-ffi bench/data_path_bench.ts
//
// Rows are per frame; divide by 44 for one packet. The splitFrame row alone shows what cutting
// and checksumming is of the whole.
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";
import { DataPath, newPeer } from "../lib/core/data_path.ts";
import { TunnelSession } from "../lib/core/session.ts";
import { DropCounters } from "../lib/core/log.ts";
import {
  GSO_TCPV4,
  splitFrame,
  TcpCoalescer,
  VNET_F_NEEDS_CSUM,
  VNET_HDR_BYTES,
} from "../lib/core/offload.ts";

installAeadBackend(); // libsodium where it loads, as the daemons choose

const MTU = 1400;
const IP_HEADER = 20;
const TCP_HEADER = 32; // with the timestamp option, as Linux sends
const MSS = MTU - IP_HEADER - TCP_HEADER;
const SEGMENTS = 44;
const SERVER = 0x0a2b0001;
const CLIENT = 0x0a2b0002;
const HOST = 0xc6120001;

/** A TSO frame as a TUN device with offloads hands it over: one TCP segment of 44 MSS. */
function tsoFrame(seq: number): Uint8Array {
  const headers = IP_HEADER + TCP_HEADER;
  const total = headers + SEGMENTS * MSS;
  const f = new Uint8Array(VNET_HDR_BYTES + total);
  f.set([VNET_F_NEEDS_CSUM, GSO_TCPV4, headers, 0, MSS & 0xff, MSS >> 8, IP_HEADER, 0, 16, 0]);
  const p = f.subarray(VNET_HDR_BYTES);
  const v = new DataView(p.buffer, p.byteOffset);
  p.set([0x45, 0, total >> 8, total & 0xff, 0, 1, 0x40, 0, 64, 6]);
  v.setUint32(12, CLIENT);
  v.setUint32(16, SERVER);
  v.setUint16(20, 40000);
  v.setUint16(22, 5201);
  v.setUint32(24, seq);
  p[32] = (TCP_HEADER / 4) << 4;
  p[33] = 0x10; // ACK
  v.setUint16(34, 0xffff);
  p.set([1, 1, 8, 10], 40); // NOP NOP timestamp
  for (let i = headers; i < total; i++) p[i] = i & 0xff;
  return f;
}

const tid = crypto.getRandomValues(new Uint8Array(32));
const rootA = crypto.getRandomValues(new Uint8Array(32));
const rootB = crypto.getRandomValues(new Uint8Array(32));
const sender = TunnelSession.create(tid, rootA.slice(), rootB.slice(), 0);
const receiver = TunnelSession.create(tid, rootB.slice(), rootA.slice(), 0);

// The sender's side: sealed straight into one of 64 send slots, as UdpSocket.sendSlot hands out.
const slots = Array.from({ length: 64 }, () => new Uint8Array(2048));
let slot = 0;
const wires: Uint8Array[] = [];
const tx = new DataPath(
  {
    sendUdp: (d) => void wires.push(d),
    writeTun: () => true,
    udpBuffer: () => slots[slot++ & 63],
  },
  new DropCounters(),
  { deliverTo: SERVER, roaming: false },
);
tx.peers.add(newPeer(sender, SERVER, HOST, 1, 0));

// The receiver's side: opened in place, joined per flow, written as one frame.
let written = 0;
const coalescer = new TcpCoalescer((frame) => void (written += frame.length));
const rx = new DataPath(
  {
    sendUdp: () => true,
    writeTun: (p, partial) => void coalescer.push(p, partial),
    finishesChecksums: true,
  },
  new DropCounters(),
  { deliverTo: SERVER, roaming: false },
);
rx.peers.add(newPeer(receiver, CLIENT, HOST, 1, 0));

// The frames are cut in place, so each round starts from a fresh copy.
const originals = Array.from({ length: 8 }, (_, i) => tsoFrame(i * SEGMENTS * MSS));
const frames = originals.map((f) => f.slice());
let round = 0;
// One session serves every round: a key schedule of 2^32 packets is far beyond a bench's count,
// and the clock stays inside one epoch.
const NOW = 1;

function oneFrame(): void {
  const k = round++ & 7;
  frames[k].set(originals[k]);
  wires.length = 0;
  splitFrame(frames[k], (p) => void tx.fromTun(p, NOW));
  for (const w of wires) rx.fromNetwork(w, HOST, 1, NOW);
  coalescer.flush();
}

// Self-check: a frame goes through whole, as one frame of the same bytes.
oneFrame();
if (wires.length !== SEGMENTS || written !== originals[0].length) {
  throw new Error(`data path model broken: ${wires.length} packets, ${written} bytes written`);
}

Deno.bench({
  name: "64 kB TSO frame: split, seal, open, coalesce (44 packets, both ends)",
  group: "data-path",
  baseline: true,
  fn: oneFrame,
});

Deno.bench({
  name: "64 kB TSO frame: splitFrame alone (cut, IP and TCP checksums)",
  group: "data-path",
  fn: () => {
    const k = round++ & 7;
    frames[k].set(originals[k]);
    splitFrame(frames[k], () => {});
  },
});
