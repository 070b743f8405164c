// A handshake load generator, run inside a lab namespace (bench/handshake_load.ts and
// tests/flood_test.ts start it there):
//
//   deno run -A tests/helpers/handshake_gen.ts JSON
//
// JSON: { mode: "load", target, port, keyPort, sources: [addr...], steps: [rate...],
//         window, drain, adaptive }  offers valid handshakes at each rate for `window` seconds,
//         each followed by one 0-RTT ICMP echo through the new tunnel, and counts the echo
//         replies that come back through it. Prints one JSON line per step.
//       { mode: "flood", target, port, sources, rate, seconds }  sends initiation-shaped junk
//         (random c0, and truncated ones) from all `sources`; prints one JSON line at the end.
//
// The initiations of a step are prepared before its window (fresh ciphertexts each, native
// KEMs), and so are the echoes behind them (the first and its three resends), so the window
// itself only copies prepared datagrams into sendmmsg batches. The load mode sends from all its
// source addresses through one socket (source_socket.ts: IP_PKTINFO names each datagram's
// source); the flood mode has one socket per source address. The server's per-address rate
// limit decides how many sources a rate needs.

import { fixture } from "../fixtures.ts";
import { installAeadBackend } from "../../lib/runtime/aead_backend.ts";
import { loadKemBackend } from "../../lib/runtime/kem_backend.ts";
import { ephemeralKeyRequest, parseKeyResponse } from "../../lib/core/keymsg.ts";
import { tidKeyAt, type TunnelSession } from "../../lib/core/session.ts";
import { ipv4ToNumber } from "../../lib/core/ip.ts";
import { UdpSocket } from "../../ffi/udp.ts";
import { icmpEcho, prepareInitiation, randomInitiation } from "./initiations.ts";
import { SourceSocket } from "./source_socket.ts";

interface LoadPlan {
  mode: "load";
  target: string;
  port: number;
  keyPort: number;
  sources: string[];
  steps: number[];
  window: number;
  drain: number;
  /**
   * Stop rising once a step answers < 90 % twice (it is run once more the first time), then
   * offer 5× the best answered rate once.
   */
  adaptive: boolean;
  /** Largest rate offered (the generator's own budget), default 20000/s. */
  maxRate?: number;
}

interface FloodPlan {
  mode: "flood";
  target: string;
  port: number;
  sources: string[];
  rate: number;
  seconds: number;
}

export interface StepResult {
  offered: number;
  offeredRate: number;
  answered: number;
  answeredRate: number;
  p50: number | null;
  p99: number | null;
  sendSeconds: number;
  prepareSeconds: number;
  /** Datagrams the generator's kernel refused to send (counted, not offered). */
  sendFailures: number;
  /**
   * Cores' worth of CPU that neither this generator nor (idle then) the server used while the
   * step was prepared: other work on the machine, the noise in the figures.
   */
  othersWhilePreparing: number;
  /** Cores' worth of CPU the whole machine, and the generator, used in the window and drain. */
  machineCores: number;
  generatorCores: number;
}

const t0 = performance.now();
const now = () => (performance.now() - t0) / 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Clock ticks (USER_HZ) the whole machine spent busy and in all, and this process used. */
function cpuTicks(): { busy: number; total: number; self: number } {
  const cpu = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1)
    .map(Number);
  const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = cpu[3] + cpu[4];
  // /proc/self/stat: utime and stime are fields 14 and 15, after the ")" of the name
  const own = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return { busy: total - idle, total, self: Number(own[11]) + Number(own[12]) };
}

/** Cores' worth of CPU between two samples: the machine's, this process's, and the rest. */
function coresUsed(
  a: ReturnType<typeof cpuTicks>,
  b: ReturnType<typeof cpuTicks>,
  cores: number,
): { machine: number; generator: number } {
  const ticks = Math.max(1, b.total - a.total) / cores; // ticks per core in the interval
  return { machine: (b.busy - a.busy) / ticks, generator: (b.self - a.self) / ticks };
}

/** The flood's sockets: one per source address. */
function floodSockets(sources: string[]): UdpSocket[] {
  return sources.map((a) =>
    UdpSocket.bind(ipv4ToNumber(a), 0, { batch: 8, maxDatagram: 2048, bufferBytes: 1 << 16 })
  );
}

/**
 * Source ports per address: handshake j goes out from address j mod A on port j div A mod PORTS,
 * so one client identity (address and port) has one handshake in flight at a time, as a real
 * client does, up to PORTS × A handshakes a second (the server holds early packets per address
 * and port). The rate limit still counts per address.
 */
const PORTS = 8;

/** PORTS sockets on 0.0.0.0 (one port each), every source address on each. */
class SourcePorts {
  readonly socks = Array.from({ length: PORTS }, () => new SourceSocket());

  queue(lane: number, data: Uint8Array, src: number, dst: number, port: number): void {
    this.socks[lane].queue(data, src, dst, port);
  }

  flush(): void {
    for (const s of this.socks) s.flush();
  }

  drain(handle: (data: Uint8Array) => void): void {
    for (const s of this.socks) s.drain(handle);
  }

  get sendFailures(): number {
    return this.socks.reduce((n, s) => n + s.sendFailures, 0);
  }

  close(): void {
    for (const s of this.socks) s.close();
  }
}

async function fetchEphemeral(sock: SourcePorts, target: number, keyPort: number) {
  for (let attempt = 0; attempt < 20; attempt++) {
    sock.socks[0].sock.sendTo(ephemeralKeyRequest(), target, keyPort);
    for (let i = 0; i < 50; i++) {
      await sleep(10);
      let found: ReturnType<typeof parseKeyResponse> = null;
      sock.drain((d) => {
        const r = parseKeyResponse(d);
        if (r?.kind === "ephemeral") found = r;
      });
      if (found) return found as { sntrupPk: Uint8Array; x25519Pk: Uint8Array };
    }
  }
  throw new Error("no ephemeral key from the server");
}

interface Pending {
  session: TunnelSession;
  source: number;
  /** Which of the source ports it uses. */
  lane: number;
  sentAt: number;
  answeredAt: number | null;
  /** The echo sealed for each resend, made before the window like the first one. */
  resends: Uint8Array[];
}

/**
 * An unanswered echo is sent again 0.1, 0.3 and 0.7 s after the first, as a client's own
 * retransmission would (lib/client/device.ts resends its first packets too, more often): a server
 * that drops packets arriving before its handshake is done (the reference does) then answers
 * the next one, and pays for it in latency.
 */
const RESEND_AT = [0.1, 0.3, 0.7];

/** The echoes due again, one FIFO per resend: entries go in in send order, so each is sorted. */
class Resends {
  readonly #fifos: { p: Pending; at: number }[][] = RESEND_AT.map(() => []);
  readonly #heads = RESEND_AT.map(() => 0);

  add(p: Pending): void {
    RESEND_AT.forEach((after, k) => this.#fifos[k].push({ p, at: p.sentAt + after }));
  }

  /** Each resend due by `t` of a handshake not answered yet. */
  due(t: number, send: (p: Pending, k: number) => void): void {
    this.#fifos.forEach((fifo, k) => {
      let h = this.#heads[k];
      for (; h < fifo.length && fifo[h].at <= t; h++) {
        if (fifo[h].p.answeredAt === null) send(fifo[h].p, k);
      }
      this.#heads[k] = h;
    });
  }

  clear(): void {
    this.#fifos.forEach((f) => f.length = 0);
    this.#heads.fill(0);
  }
}

async function load(plan: LoadPlan): Promise<void> {
  installAeadBackend();
  const kems = await loadKemBackend("auto");
  const enc = kems.mceliece.encapsulator(fixture("mceliece_pk"));
  const x25519Pk = fixture("x25519_pk");
  const sock = new SourcePorts();
  const sources = plan.sources.map(ipv4ToNumber);
  const target = ipv4ToNumber(plan.target);
  const pending = new Map<string, Pending>();
  // A datagram whose tunnel id we sent, and that opens with its session, is an answer.
  const onReply = (d: Uint8Array) => {
    if (d.length < 36) return;
    const p = pending.get(tidKeyAt(d, 2));
    if (!p || p.answeredAt !== null) return;
    if (p.session.openPacket(d, now()).ok) p.answeredAt = now();
  };
  const src = ipv4ToNumber("10.43.0.2");
  const dst = ipv4ToNumber(plan.target);
  const resends = new Resends();
  const resend = (p: Pending, k: number) =>
    sock.queue(p.lane, p.resends[k], p.source, target, plan.port);
  let best = 0;
  let overloadDone = false;
  /** The step that was run again (the one after it is its second run). */
  let retried = -2;
  const rates = [...plan.steps];
  for (let i = 0; i < rates.length; i++) {
    const rate = Math.min(rates[i], plan.maxRate ?? 20000);
    const count = Math.max(1, Math.round(rate * plan.window));
    // Prepare: a fresh ephemeral key (slots turn every 30 s), then every initiation and the
    // echoes that go behind it (the first and its resends, each sealed with the next counter).
    const eph = await fetchEphemeral(sock, target, plan.keyPort);
    const server = { x25519Pk, ephemeralX25519Pk: eph.x25519Pk, ephemeralSntrupPk: eph.sntrupPk };
    const p0 = now();
    const c0 = cpuTicks();
    const batch = Array.from({ length: count }, (_, j) => {
      const hs = prepareInitiation(enc, kems.sntrup, server, now());
      const echoes = [0, ...RESEND_AT].map((_, k) =>
        hs.session.sealPacket(icmpEcho(src, dst, j, k), now()).slice()
      );
      const lane = Math.floor(j / sources.length) % PORTS;
      return { hs, echoes, source: sources[j % sources.length], lane };
    });
    const prepareSeconds = now() - p0;
    const c1 = cpuTicks();
    pending.clear();
    resends.clear();
    const failedBefore = sock.sendFailures;
    // Send, spread evenly over the window in 1 ms ticks, reading replies in between.
    const start = now();
    let sent = 0;
    while (sent < count) {
      const due = Math.min(count, Math.ceil((now() - start) * rate) + 1);
      for (; sent < due; sent++) {
        const b = batch[sent];
        const p: Pending = {
          session: b.hs.session,
          source: b.source,
          lane: b.lane,
          sentAt: now(),
          answeredAt: null,
          resends: b.echoes.slice(1),
        };
        pending.set(tidKeyAt(b.echoes[0], 2), p);
        resends.add(p);
        sock.queue(b.lane, b.hs.message, b.source, target, plan.port);
        sock.queue(b.lane, b.echoes[0], b.source, target, plan.port);
      }
      resends.due(now(), resend);
      sock.flush();
      sock.drain(onReply);
      if (sent < count) await sleep(1);
    }
    const sendSeconds = now() - start;
    const drainUntil = now() + plan.drain;
    while (now() < drainUntil) {
      sock.drain(onReply);
      resends.due(now(), resend);
      sock.flush();
      await sleep(2);
    }
    const c2 = cpuTicks();
    const cores = navigator.hardwareConcurrency || 1;
    const preparing = coresUsed(c0, c1, cores);
    const stepCpu = coresUsed(c1, c2, cores);
    const answered = [...pending.values()].filter((p) => p.answeredAt !== null);
    const lat = answered.map((p) => (p.answeredAt! - p.sentAt) * 1000).sort((a, b) => a - b);
    // Answers per second while answers were coming in (first to last): what the server
    // sustained. Counting from the first send instead would charge the queueing latency of an
    // overloaded step to its throughput, and counting only the send window would credit the
    // queue it drains afterwards as if it had come in the window.
    const times = answered.map((p) => p.answeredAt!).sort((a, b) => a - b);
    const window = Math.max(plan.window, sendSeconds);
    const span = times.length >= 2 ? times.at(-1)! - times[0] : 0;
    const answeredRate = span > 0 ? (times.length - 1) / span : times.length / window;
    const r: StepResult = {
      offered: count,
      offeredRate: count / window,
      answered: lat.length,
      answeredRate,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      sendSeconds,
      prepareSeconds,
      sendFailures: sock.sendFailures - failedBefore,
      othersWhilePreparing: preparing.machine - preparing.generator,
      machineCores: stepCpu.machine,
      generatorCores: stepCpu.generator,
    };
    console.log(JSON.stringify({ step: r }));
    for (const b of batch) b.hs.session.close();
    best = Math.max(best, r.answeredRate);
    const short = r.answered < 0.9 * r.offered;
    if (plan.adaptive && !overloadDone && short && retried !== i - 1) {
      // The machine is shared: a step that falls short is run once more before it counts as
      // the knee, so one noisy step does not end the rise early.
      rates.splice(i + 1, 0, rates[i]);
      retried = i;
      continue;
    }
    if (plan.adaptive && !overloadDone && (short || i === rates.length - 1)) {
      // Past the knee (or out of steps): one step at 5× the best answered rate, then stop.
      rates.splice(i + 1, rates.length, Math.max(1, Math.round(5 * best)));
      overloadDone = true;
    }
  }
  enc.dispose();
  sock.close();
}

async function flood(plan: FloodPlan): Promise<void> {
  const socks = floodSockets(plan.sources);
  const target = ipv4ToNumber(plan.target);
  const start = now();
  let sent = 0;
  let k = 0;
  // A pool of junk reused round-robin: random c0s, and every 8th one truncated.
  const junk = Array.from({ length: 512 }, (_, i) => {
    const m = randomInitiation();
    return i % 8 === 7 ? m.subarray(0, 600) : m;
  });
  while (now() - start < plan.seconds) {
    const due = Math.ceil((now() - start) * plan.rate);
    for (; sent < due; sent++) {
      const m = junk[sent % junk.length];
      crypto.getRandomValues(m.subarray(2, 18)); // every c0 different
      socks[k++ % socks.length].sendTo(m, target, plan.port);
    }
    await sleep(1);
  }
  const seconds = now() - start;
  console.log(JSON.stringify({ flood: { sent, seconds, rate: sent / seconds } }));
  for (const s of socks) s.close();
}

if (import.meta.main) {
  const plan = JSON.parse(Deno.args[0]) as LoadPlan | FloodPlan;
  if (plan.mode === "load") await load(plan);
  else await flood(plan);
}
