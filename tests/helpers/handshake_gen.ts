// A handshake load generator, run inside a lab namespace (bench/handshake_load.ts and
// tests/flood_test.ts start it there):
//
//   deno run -A tests/helpers/handshake_gen.ts JSON
//
// JSON: { mode: "load", target, port, keyPort, sources: [addr...], steps: [rate...],
//         window, drain, adaptive, overload?, resendInitiation? }  offers valid handshakes at
//         each rate for `window` seconds, each followed by one 0-RTT ICMP echo through the new
//         tunnel, and counts the echo replies that come back through it. Prints one JSON line
//         per step (LoadPlan says what each field does).
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
import { ReceiveChain, TunnelSession } from "../../lib/core/session.ts";
import { aeadOpenPacket } from "../../lib/core/aead.ts";
import { wipe } from "../../lib/core/bytes.ts";
import {
  HANDSHAKE_BYTES,
  KEY_BYTES,
  NONCE_BYTES,
  TAG_BYTES,
  TID_BYTES,
  TUNNEL_HEADER_BYTES,
  TUNNEL_OVERHEAD,
} from "../../lib/core/constants.ts";
import { ipv4ToNumber } from "../../lib/core/ip.ts";
import { UdpSocket } from "../../ffi/udp.ts";
import { addressOf, libc } from "../../ffi/libc.ts";
import { icmpEcho, type InitiationParts, makeInitiation, randomInitiation } from "./initiations.ts";
import { SourceSocket } from "./source_socket.ts";
import {
  type CpuAccount,
  cpuAccount,
  machineCoreCount,
  resolveTasks,
  sampleCpu,
  type Watched,
} from "./thread_cpu.ts";

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
  /** With `adaptive`: false to stop at the knee, without the 5× step (default true). */
  overload?: boolean;
  /** Largest rate offered (the generator's own budget), default 20000/s. */
  maxRate?: number;
  /** Processes whose threads' CPU each step's window accounts for, besides the generator's. */
  watch?: Watched[];
  /**
   * Send the initiation again with each resend of an unanswered echo (+0.1, +0.3, +0.7 s), about
   * as often as our client does (lib/client/device.ts: every INITIATION_RESEND_SECONDS with its
   * first packets' resends): a client's behaviour, for the tests of one. The bench leaves it off
   * and offers each handshake once.
   */
  resendInitiation?: boolean;
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
  /** The rate the step asked for: offeredRate falls short when the window ran long. */
  askedRate: number;
  answered: number;
  answeredRate: number;
  p50: number | null;
  p99: number | null;
  sendSeconds: number;
  prepareSeconds: number;
  /** Datagrams the generator's kernel refused to send (counted, not offered). */
  sendFailures: number;
  /** Times the generator waited (up to 1 ms) for room in a socket's send buffer. */
  sendWaits: number;
  /**
   * Cores' worth of CPU that neither this generator nor (idle then) the server used while the
   * step was prepared: other work on the machine, the noise in the figures.
   */
  othersWhilePreparing: number;
  /** Cores' worth of CPU the whole machine, and the generator, used in the window and drain. */
  machineCores: number;
  generatorCores: number;
  /** Where the cores went in the send window, thread by thread (thread_cpu.ts). */
  windowCpu: CpuAccount;
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
const POLL_COUNT = 8n; // PORTS, as poll() takes it
const POLLIN = 1;

/** PORTS sockets on 0.0.0.0 (one port each), every source address on each, all to one server. */
class SourcePorts {
  readonly socks = Array.from({ length: PORTS }, () => new SourceSocket());
  /** pollfd entries of the sockets: one poll() tells which have replies waiting. */
  readonly #pollFds = new Uint8Array(8 * PORTS);
  readonly #pollView = new DataView(this.#pollFds.buffer);

  constructor(readonly dst: number, readonly port: number) {
    this.socks.forEach((s, i) => {
      this.#pollView.setInt32(8 * i, s.sock.fd, true);
      this.#pollView.setInt16(8 * i + 4, POLLIN, true);
    });
  }

  /** Queues bytes of a prepared buffer (not copied: it stays as it is until the flush). */
  queueAt(
    lane: number,
    bytes: Uint8Array,
    base: number,
    offset: number,
    length: number,
    src: number,
  ): void {
    this.socks[lane].queueAt(bytes, base, offset, length, src, this.dst, this.port);
  }

  flush(): void {
    for (const s of this.socks) s.flush();
  }

  /** Hands every reply waiting on any socket to `handle`: one poll(), then only the ready ones. */
  drain(handle: (data: Uint8Array) => void): void {
    if (libc().poll(this.#pollFds, POLL_COUNT, 0) <= 0) return;
    for (let i = 0; i < PORTS; i++) {
      if (this.#pollView.getInt16(8 * i + 6, true) !== 0) this.socks[i].drain(handle);
    }
  }

  get sendFailures(): number {
    return this.socks.reduce((n, s) => n + s.sendFailures, 0);
  }

  get sendWaits(): number {
    return this.socks.reduce((n, s) => n + s.sendWaits, 0);
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

/**
 * An unanswered echo is sent again 0.1, 0.3 and 0.7 s after the first, as a client's own
 * retransmission would (lib/client/device.ts resends its first packets too, more often): a server
 * that drops packets arriving before its handshake is done (the reference does) then answers
 * the next one, and pays for it in latency.
 */
const RESEND_AT = [0.1, 0.3, 0.7];
/** Echoes per handshake: the first and its resends. */
const ECHOES = 1 + RESEND_AT.length;
/** A sealed echo: the 28-byte ICMP echo request in a tunnel packet. */
const ECHO_BYTES = 28 + TUNNEL_OVERHEAD;

/**
 * One step's handshakes, everything its window needs prepared before it, in flat arrays: no
 * object, string or session per handshake, so the window allocates next to nothing and the
 * heap V8's collector walks stays small however many handshakes a step offers. Handshake j's
 * initiation, its echoes, its tunnel id and the keys that open the server's replies lie at j
 * times their size. The buffers are kept from step to step and only grow.
 */
export class PreparedStep {
  count = 0;
  initiations = new Uint8Array(0);
  initiationsBase = 0;
  echoes = new Uint8Array(0);
  echoesBase = 0;
  tids = new Uint8Array(0);
  /**
   * The receive keys of epoch 0, counters 0 to ECHOES - 1: the server seals at most one reply
   * per echo, each with its next counter, so these open every reply the handshake can get.
   */
  replyKeys = new Uint8Array(0);
  source = new Uint32Array(0);
  lane = new Uint8Array(0);
  sentAt = new Float64Array(0);
  /** NaN until a reply opened. */
  answeredAt = new Float64Array(0);
  /** Open addressing on the tunnel id's first 4 bytes: index + 1, 0 when empty. */
  #slots = new Int32Array(0);
  #mask = 0;

  /** Room for `count` handshakes, the previous step's keys erased. */
  reset(count: number): void {
    wipe(this.replyKeys);
    this.count = count;
    if (count > this.sentAt.length) {
      const room = Math.max(count, 2 * this.sentAt.length);
      this.initiations = new Uint8Array(room * HANDSHAKE_BYTES);
      this.initiationsBase = Number(addressOf(this.initiations));
      this.echoes = new Uint8Array(room * ECHOES * ECHO_BYTES);
      this.echoesBase = Number(addressOf(this.echoes));
      this.tids = new Uint8Array(room * TID_BYTES);
      this.replyKeys = new Uint8Array(room * ECHOES * KEY_BYTES);
      this.source = new Uint32Array(room);
      this.lane = new Uint8Array(room);
      this.sentAt = new Float64Array(room);
      this.answeredAt = new Float64Array(room);
      let size = 1;
      while (size < 2 * room) size *= 2;
      this.#slots = new Int32Array(size);
      this.#mask = size - 1;
    }
    this.#slots.fill(0);
    this.sentAt.fill(NaN);
    this.answeredAt.fill(NaN);
  }

  /** Handshake j: its initiation and session's roots, whose keys it seals and opens with. */
  set(j: number, hs: InitiationParts, echoes: (k: number) => Uint8Array, at: number): void {
    this.initiations.set(hs.message, j * HANDSHAKE_BYTES);
    this.tids.set(hs.tid, j * TID_BYTES);
    const receive = new ReceiveChain(hs.r2i.slice(), 0, at);
    for (let k = 0; k < ECHOES; k++) {
      this.replyKeys.set(receive.find(0, k, at)!.key, (j * ECHOES + k) * KEY_BYTES);
    }
    receive.clear();
    const session = TunnelSession.create(hs.tid, hs.i2r, hs.r2i, at);
    for (let k = 0; k < ECHOES; k++) {
      const at0 = (j * ECHOES + k) * ECHO_BYTES;
      session.sealPacket(echoes(k), at, this.echoes.subarray(at0, at0 + ECHO_BYTES));
    }
    session.close();
    let h = this.#hash(this.tids, j * TID_BYTES);
    while (this.#slots[h] !== 0) h = (h + 1) & this.#mask;
    this.#slots[h] = j + 1;
  }

  #hash(bytes: Uint8Array, at: number): number {
    return (bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 | bytes[at + 3] << 24) &
      this.#mask;
  }

  /** The handshake whose tunnel id a packet carries at offset 2, or -1. */
  find(packet: Uint8Array): number {
    for (let h = this.#hash(packet, 2);; h = (h + 1) & this.#mask) {
      const j = this.#slots[h] - 1;
      if (j < 0) return -1;
      const t = j * TID_BYTES;
      let i = 0;
      while (i < TID_BYTES && this.tids[t + i] === packet[2 + i]) i++;
      if (i === TID_BYTES) return j;
    }
  }

  /**
   * A reply to handshake j's tunnel: true when it opens with that handshake's keys (epoch 0,
   * a counter it can reach). Decrypts in place: `packet` is a receive slot, read once.
   */
  opens(j: number, packet: Uint8Array): boolean {
    if (packet[34] !== 0 || packet[35] !== 0) return false;
    const ctr = (packet[36] << 24 | packet[37] << 16 | packet[38] << 8 | packet[39]) >>> 0;
    if (ctr >= ECHOES) return false;
    const k = (j * ECHOES + ctr) * KEY_BYTES;
    const key = REPLY_KEY;
    for (let i = 0; i < KEY_BYTES; i++) key[i] = this.replyKeys[k + i];
    const out = packet.subarray(TUNNEL_HEADER_BYTES, packet.length - TAG_BYTES);
    const ok = aeadOpenPacket(key, ZERO_NONCE, packet, TUNNEL_HEADER_BYTES, out);
    key.fill(0);
    return ok;
  }
}

/** The key opening a reply, copied here from the flat array (no view per reply). */
const REPLY_KEY = new Uint8Array(KEY_BYTES);
const ZERO_NONCE = new Uint8Array(NONCE_BYTES);

/** The samples of a CPU account: its tasks found before the window, then two samples. */
function accountStart(watch: Watched[]) {
  const tasks = resolveTasks(watch);
  return { tasks, sample: sampleCpu(tasks) };
}

async function load(plan: LoadPlan): Promise<void> {
  installAeadBackend();
  const kems = await loadKemBackend("auto");
  const enc = kems.mceliece.encapsulator(fixture("mceliece_pk"));
  const x25519Pk = fixture("x25519_pk");
  const sources = plan.sources.map(ipv4ToNumber);
  const target = ipv4ToNumber(plan.target);
  const sock = new SourcePorts(target, plan.port);
  const step = new PreparedStep();
  const watch: Watched[] = [{ owner: "generator", pid: Deno.pid }, ...(plan.watch ?? [])];
  const cores = machineCoreCount();
  // A datagram whose tunnel id we sent, and that opens with its session's keys, is an answer.
  const onReply = (d: Uint8Array) => {
    if (d.length < TUNNEL_OVERHEAD || d[0] !== 0x02 || d[1] !== 0x00) return;
    const j = step.find(d);
    if (j < 0 || !Number.isNaN(step.answeredAt[j])) return; // not ours, or answered
    if (step.opens(j, d)) step.answeredAt[j] = now();
  };
  /** Per resend k: the next handshake, in send order, whose resend k is not due yet. */
  const resendNext = new Int32Array(RESEND_AT.length);
  /** Queues each resend due by `t` of the first `sent` handshakes that are not answered yet. */
  const resendDue = (t: number, sent: number) => {
    for (let k = 0; k < RESEND_AT.length; k++) {
      const after = RESEND_AT[k];
      let j = resendNext[k];
      for (; j < sent && step.sentAt[j] + after <= t; j++) {
        if (!Number.isNaN(step.answeredAt[j])) continue;
        if (plan.resendInitiation === true) {
          const hs = j * HANDSHAKE_BYTES;
          sock.queueAt(
            step.lane[j],
            step.initiations,
            step.initiationsBase,
            hs,
            HANDSHAKE_BYTES,
            step.source[j],
          );
        }
        const at = (j * ECHOES + 1 + k) * ECHO_BYTES;
        sock.queueAt(step.lane[j], step.echoes, step.echoesBase, at, ECHO_BYTES, step.source[j]);
      }
      resendNext[k] = j;
    }
  };
  const src = ipv4ToNumber("10.43.0.2");
  const dst = ipv4ToNumber(plan.target);
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
    step.reset(count);
    for (let j = 0; j < count; j++) {
      const hs = makeInitiation(enc, kems.sntrup, server);
      step.set(j, hs, (k) => icmpEcho(src, dst, j, k), now());
      step.source[j] = sources[j % sources.length];
      step.lane[j] = Math.floor(j / sources.length) % PORTS;
    }
    const prepareSeconds = now() - p0;
    const c1 = cpuTicks();
    resendNext.fill(0);
    const failedBefore = sock.sendFailures;
    const waitsBefore = sock.sendWaits;
    const account = accountStart(watch);
    // Send, spread evenly over the window in 1 ms ticks, reading replies in between.
    const start = now();
    let sent = 0;
    while (sent < count) {
      const t = now();
      const due = Math.min(count, Math.ceil((t - start) * rate) + 1);
      for (; sent < due; sent++) {
        const j = sent;
        step.sentAt[j] = t;
        const lane = step.lane[j];
        const from = step.source[j];
        sock.queueAt(
          lane,
          step.initiations,
          step.initiationsBase,
          j * HANDSHAKE_BYTES,
          HANDSHAKE_BYTES,
          from,
        );
        sock.queueAt(lane, step.echoes, step.echoesBase, j * ECHOES * ECHO_BYTES, ECHO_BYTES, from);
      }
      resendDue(t, sent);
      sock.flush();
      sock.drain(onReply);
      if (sent < count) await sleep(1);
    }
    const sendSeconds = now() - start;
    const windowCpu = cpuAccount(account.sample, sampleCpu(account.tasks), cores);
    const drainUntil = now() + plan.drain;
    while (now() < drainUntil) {
      sock.drain(onReply);
      resendDue(now(), count);
      sock.flush();
      await sleep(2);
    }
    const c2 = cpuTicks();
    const preparing = coresUsed(c0, c1, cores);
    const stepCpu = coresUsed(c1, c2, cores);
    const lat: number[] = [];
    const times: number[] = [];
    for (let j = 0; j < count; j++) {
      const a = step.answeredAt[j];
      if (Number.isNaN(a)) continue;
      lat.push((a - step.sentAt[j]) * 1000);
      times.push(a);
    }
    lat.sort((a, b) => a - b);
    // Answers per second while answers were coming in (first to last): what the server
    // sustained. Counting from the first send instead would charge the queueing latency of an
    // overloaded step to its throughput, and counting only the send window would credit the
    // queue it drains afterwards as if it had come in the window.
    times.sort((a, b) => a - b);
    const window = Math.max(plan.window, sendSeconds);
    const span = times.length >= 2 ? times.at(-1)! - times[0] : 0;
    const answeredRate = span > 0 ? (times.length - 1) / span : times.length / window;
    const r: StepResult = {
      offered: count,
      offeredRate: count / window,
      askedRate: rate,
      answered: lat.length,
      answeredRate,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      sendSeconds,
      prepareSeconds,
      sendFailures: sock.sendFailures - failedBefore,
      sendWaits: sock.sendWaits - waitsBefore,
      othersWhilePreparing: preparing.machine - preparing.generator,
      machineCores: stepCpu.machine,
      generatorCores: stepCpu.generator,
      windowCpu,
    };
    console.log(JSON.stringify({ step: r }));
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
      if (plan.overload === false) break; // only the capacity was asked for
      // Past the knee (or out of steps): one step at 5× the best answered rate, then stop.
      rates.splice(i + 1, rates.length, Math.max(1, Math.round(5 * best)));
      overloadDone = true;
    }
  }
  step.reset(0);
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
