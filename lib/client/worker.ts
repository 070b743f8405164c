// The client's unprivileged worker: everything that touches bytes from the network. Started by
// the supervisor with the TUN device on descriptor 3 and the DNS channel on descriptor 4; it
// loads its code and the crypto worker, binds the client port, drops to the unprivileged user,
// says READY, and only then reads anything.

import { CRYPTO_PORT, KEY_PORT } from "../core/constants.ts";
import { ClientDevice, type KeyChannel } from "./device.ts";
import { decodeChannelMessage, encodeVerdict, MSG_READY } from "./messages.ts";
import { serveControl } from "./control.ts";
import { DnsRewriter } from "../core/dns_rewrite.ts";
import { DnsJobs } from "./dns_jobs.ts";
import { parsePq1Name } from "../core/names.ts";
import { ipv4ToNumber, numberToIpv4 } from "../core/ip.ts";
import { DropCounters, type Logger } from "../core/log.ts";
import { StderrLogger } from "../runtime/log.ts";
import { Cleanup } from "../runtime/cleanup.ts";
import { installAeadBackend } from "../runtime/aead_backend.ts";
import type { KemChoice } from "../runtime/kem_backend.ts";
import { installHashBackend } from "../runtime/hash_backend.ts";
import { warmUp } from "../runtime/warmup.ts";
import { DataPathWarmer } from "../runtime/path_warmer.ts";
import { CryptoPool } from "../runtime/crypto_pool.ts";
import { TunDevice } from "../../ffi/tun.ts";
import { MAX_UDP_PAYLOAD, UdpSocket } from "../../ffi/udp.ts";
import { SeqPacketChannel } from "../../ffi/spawn.ts";
import { dropPrivileges, lookupUser } from "../../ffi/privdrop.ts";
import { type PacketSource, TunnelLoop } from "../runtime/packet_loop.ts";
import { TickLoop } from "../runtime/tick_loop.ts";
import { Shutdown } from "../runtime/shutdown.ts";

export interface WorkerOptions {
  tunFd: number;
  dnsFd: number;
  port: number;
  tunAddress: string;
  prefix: number;
  user: string;
  controlSocket: string;
  precomputed: number;
  kem: KemChoice;
  canary: boolean;
  verbose: boolean;
  hostAddress?: string;
}

export async function runClientWorker(opts: WorkerOptions): Promise<number> {
  const log = new StderrLogger("pqconnect-client", opts.verbose ? "debug" : "info");
  log.info(`AEAD backend: ${installAeadBackend()}, SHAKE256: ${installHashBackend()}`);
  const user = lookupUser(opts.user);
  const drops = new DropCounters();
  const cleanup = new Cleanup(log);
  try {
    return await serve(opts, log, user, drops, cleanup);
  } catch (e) {
    // Said here, before the clean-up closes the channel: the supervisor stops this process as
    // soon as it sees the channel close, so a reason left to main.ts would often be lost.
    log.error(`${(e as Error).message ?? e}`);
    return 1;
  } finally {
    await cleanup.run();
    drops.report(log);
  }
}

async function serve(
  opts: WorkerOptions,
  log: Logger,
  user: { uid: number; gid: number },
  drops: DropCounters,
  cleanup: Cleanup,
): Promise<number> {
  const tun = TunDevice.fromFd(opts.tunFd);
  cleanup.add(() => tun.close());
  const dns = new SeqPacketChannel(opts.dnsFd);
  cleanup.add(() => dns.close());
  // The worker is not told the TUN MTU (--mtu goes to the supervisor): take any datagram.
  const sock = UdpSocket.bind(0, opts.port, { maxDatagram: MAX_UDP_PAYLOAD });
  cleanup.add(() => sock.close());
  const pool = await CryptoPool.start({ kem: opts.kem });
  cleanup.add(() => pool.close());
  await warmUp(pool, "client");
  log.info(`KEM backend: ${pool.backend}`);
  dropPrivileges(user.uid, user.gid);

  const t0 = performance.now();
  // The packet loop's clock: one reading per batch of packets.
  const now = () => (loop.now() - t0) / 1000;
  const tunAddress = ipv4ToNumber(opts.tunAddress);
  const shutdown = new Shutdown(log);
  cleanup.add(() => shutdown.dispose());
  const running = () => shutdown.running;
  const keyChannels = new Set<KeyChannel>();
  cleanup.add(() => keyChannels.forEach((c) => c.close()));
  const loop = new TunnelLoop({ tun, sock });
  const warmer = new DataPathWarmer(loop.finishesChecksums); // see PacketLoopOptions.warm
  cleanup.add(() => warmer.close());
  log.info(`data path offloads: ${loop.offloads}`);
  let seconds = 0;
  const ticks = new TickLoop("pqconnect-client", now, () => {
    device.tick();
    if (now() - seconds >= 30) {
      seconds = now();
      drops.report(log);
    }
  });
  const device = new ClientDevice(
    {
      tunAddress,
      prefix: opts.prefix,
      defaultCryptoPort: CRYPTO_PORT,
      defaultKeyPort: KEY_PORT,
      keyFetchSeconds: 20,
      precomputed: opts.precomputed,
      hostAddress: opts.hostAddress === undefined ? undefined : ipv4ToNumber(opts.hostAddress),
    },
    {
      sendUdp: (data, host, port) => loop.sendUdp(data, host, port),
      writeTun: (packet, partial) => loop.writeTun(packet, partial),
      finishesChecksums: loop.finishesChecksums,
      udpBuffer: () => loop.udpBuffer(),
      openKeyChannel: (host, port, deliver) =>
        openKeyChannel(loop, host, port, deliver, keyChannels),
      resolveTxt: async (name) => {
        const records = await Deno.resolveDns(name, "TXT");
        return records.map((parts) => parts.join(""));
      },
      wakeAt: (time) => ticks.wakeAt(time),
    },
    {
      registerMcEliecePk: (pk) => pool.registerMcEliecePublicKey(pk),
      unregisterMcEliecePk: (pkId) => pool.unregisterMcEliecePublicKey(pkId),
      mcelieceEncap: (pkId) => pool.mcelieceEncap(pkId),
      sntrupEncap: (pk) => pool.sntrupEncap(pk),
    },
    log,
    drops,
    now,
    (bytes) => crypto.getRandomValues(new Uint8Array(bytes)),
  );
  cleanup.add(() => device.close());
  const rewriter = new DnsRewriter({
    parseName: parsePq1Name,
    clientSubnet: `${numberToIpv4(tunAddress)}/${opts.prefix}`,
    canary: opts.canary,
    // The connection an answer starts (key download, handshake: ~10 ms of this thread for a new
    // server) starts once its verdict is sent, so the answer does not wait for it.
    assign: (a, realAddress, owner, answersQuestion) => {
      const internal = device.announce(a, realAddress, owner, false);
      if (answersQuestion && internal !== null) {
        afterVerdict.push(() => device.announce(a, realAddress, owner, true));
      }
      return internal;
    },
  });
  const afterVerdict: (() => void)[] = [];
  const jobs = new DnsJobs(rewriter, (id, r) => {
    const verdict = encodeVerdict(id, r.action === "rewrite" ? r.packet : null);
    if (!dns.trySend(verdict)) drops.count("channel-full");
    for (const connect of afterVerdict.splice(0)) connect();
  }, drops);
  cleanup.add(() => jobs.close());

  const control = serveControl(opts.controlSocket, () => ({
    interface: tun.name,
    address: opts.tunAddress,
    now: now(),
    servers: device.status(),
    dropped: drops.snapshot(),
    dns: { ...rewriter.stats, ...jobs.stats },
  }), log);
  cleanup.add(() => control.close());

  if (!dns.trySend(new Uint8Array([MSG_READY]))) throw new Error("supervisor channel is full");
  log.info(
    `client ready: ${tun.name} ${opts.tunAddress}/${opts.prefix}, UDP port ${sock.localPort}, ` +
      `running as ${opts.user} (uid ${user.uid})`,
  );

  // The DNS channel is one more source of the tunnel's loop: an answer is taken on the loop's
  // next round (a synchronous poll while the tunnel is busy), not after a wait on Deno's thread
  // pool that has to get a turn of the event loop too.
  const dnsSource: PacketSource = {
    fd: dns.fd,
    urgent: true, // taken between the frames of a long tunnel batch, too
    drain: () => {
      const taken = takeAnswers(dns, jobs, drops);
      if (taken !== null) return taken;
      loop.removeSource(dnsSource); // at end of file the descriptor stays readable
      shutdown.stop("supervisor gone");
      return 0;
    },
  };
  loop.addSource(dnsSource);
  await Promise.all([
    loop.run(
      "pqconnect-client",
      running,
      (p) => device.onTunPacket(p),
      (d, host, port) => device.onDatagram(d, host, port),
      // A reply from the crypto worker (a key registered, an encapsulation for the handshake)
      // is taken as it comes, not at the next turn that happens to dispatch it.
      { drops, awaitingWorker: () => pool.awaitingReplies, warm: warmer.warm },
    ),
    ticks.run(running),
  ]);
  log.info(`data path: ${loop.summary()}`);
  return 0;
}

/**
 * The worker's half of the DNS path: each answer the supervisor relays joins the rewriter's
 * jobs (lib/client/dns_jobs.ts), whose verdicts go back as they are done; small answers are
 * done at once, a huge one continues on later turns. How many answers were taken, or null once
 * the supervisor has closed the channel.
 */
function takeAnswers(dns: SeqPacketChannel, jobs: DnsJobs, drops: DropCounters): number | null {
  let taken = 0;
  for (;;) {
    const m = dns.tryRecv();
    if (m === undefined) break;
    if (m === null) return null;
    taken++;
    const msg = decodeChannelMessage(m);
    if (msg?.type !== "dns") {
      drops.count("channel-malformed");
      continue;
    }
    jobs.add(msg.id, msg.packet);
  }
  jobs.slice();
  return taken;
}

/**
 * A UDP socket of its own for one key-server conversation, served on the tunnel's packet loop
 * (no thread hop per batch): what arrives from host:port goes to `deliver` until the channel is
 * closed, and then the socket is closed.
 */
function openKeyChannel(
  loop: TunnelLoop,
  host: number,
  port: number,
  deliver: (datagram: Uint8Array, more?: boolean) => void,
  open: Set<KeyChannel>,
): KeyChannel {
  const s = UdpSocket.bind(0, 0, { maxDatagram: 2048, batch: 64 });
  // The requests of one batch are one size: one GSO send; the answers come in the same way.
  s.enableGso();
  s.enableGro();
  let closed = false;
  // Requests sent while answers are handled go out together (sendmmsg) after the batch.
  let draining = false;
  const source = {
    fd: s.fd,
    drain: () => {
      const got = s.recvBatch();
      draining = true;
      try {
        let last = got.length - 1;
        while (last >= 0 && (got[last].addr !== host || got[last].port !== port)) last--;
        for (let i = 0; i <= last && !closed; i++) {
          const d = got[i];
          // The socket's receive slots are reused: hand out copies.
          if (d.addr === host && d.port === port) deliver(d.data.slice(), i < last);
        }
      } finally {
        draining = false;
      }
      if (!closed) s.flush();
      return got.length;
    },
  };
  const channel: KeyChannel = {
    send: (d) => {
      if (closed) return;
      s.queue(d, host, port);
      if (!draining) s.flush();
    },
    close: () => {
      if (closed) return;
      closed = true;
      open.delete(channel);
      loop.removeSource(source);
      s.close();
    },
  };
  open.add(channel);
  loop.addSource(source);
  return channel;
}
