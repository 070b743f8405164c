// The client's unprivileged worker: everything that touches bytes from the network. Started by
// the supervisor with the TUN device on descriptor 3 and the DNS channel on descriptor 4; it
// loads its code and the crypto worker, binds the client port, drops to the unprivileged user,
// says READY, and only then reads anything.

import { CRYPTO_PORT, KEY_PORT } from "../core/constants.ts";
import { ClientDevice, type KeyChannel } from "./device.ts";
import { decodeMessage, encodeVerdict, MSG_READY } from "./messages.ts";
import { serveControl } from "./control.ts";
import { DnsRewriter } from "../core/dns_rewrite.ts";
import { parsePq1Name } from "../core/names.ts";
import { ipv4ToNumber, numberToIpv4 } from "../core/ip.ts";
import { DropCounters } from "../core/log.ts";
import { StderrLogger } from "../runtime/log.ts";
import { installAeadBackend } from "../runtime/aead_backend.ts";
import { CryptoPool } from "../runtime/crypto_pool.ts";
import { TunDevice } from "../../ffi/tun.ts";
import { MAX_UDP_PAYLOAD, UdpSocket } from "../../ffi/udp.ts";
import { SeqPacketChannel } from "../../ffi/spawn.ts";
import { dropPrivileges, lookupUser } from "../../ffi/privdrop.ts";
import { waitReadable } from "../../ffi/libc.ts";
import { DataPath, pump } from "../runtime/packet_loop.ts";
import { Shutdown } from "../runtime/shutdown.ts";
import { hex } from "../core/bytes.ts";

export interface WorkerOptions {
  tunFd: number;
  dnsFd: number;
  port: number;
  tunAddress: string;
  prefix: number;
  user: string;
  controlSocket: string;
  precomputed: number;
  verbose: boolean;
  hostAddress?: string;
}

export async function runClientWorker(opts: WorkerOptions): Promise<number> {
  const log = new StderrLogger("pqconnect-client", opts.verbose ? "debug" : "info");
  log.info(`AEAD backend: ${installAeadBackend()}`);
  const user = lookupUser(opts.user);
  const tun = TunDevice.fromFd(opts.tunFd);
  const dns = new SeqPacketChannel(opts.dnsFd);
  // The worker is not told the TUN MTU (--mtu goes to the supervisor): take any datagram.
  const sock = UdpSocket.bind(0, opts.port, { maxDatagram: MAX_UDP_PAYLOAD });
  const pool = await CryptoPool.start({});
  dropPrivileges(user.uid, user.gid);

  const t0 = performance.now();
  const now = () => (performance.now() - t0) / 1000;
  const drops = new DropCounters();
  const tunAddress = ipv4ToNumber(opts.tunAddress);
  const keySockets = new Set<UdpSocket>();
  const dataPath = new DataPath({ tun, sock });
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
      sendUdp: (data, host, port) => {
        if (!dataPath.sendUdp(data, host, port)) drops.count("udp-send-failed");
      },
      writeTun: (packet) => {
        if (!dataPath.writeTun(packet)) drops.count("tun-write-failed");
      },
      udpBuffer: () => dataPath.udpBuffer(),
      openKeyChannel: (host, port) => openKeyChannel(host, port, keySockets),
      resolveTxt: async (name) => {
        const records = await Deno.resolveDns(name, "TXT");
        return records.map((parts) => parts.join(""));
      },
    },
    {
      registerMcEliecePk: (pk) => pool.registerMcEliecePublicKey(pk),
      mcelieceEncap: (pkId) => pool.mcelieceEncap(pkId),
      sntrupEncap: (pk) => pool.sntrupEncap(pk),
    },
    log,
    drops,
    now,
  );
  const rewriter = new DnsRewriter({
    parseName: parsePq1Name,
    clientSubnet: `${numberToIpv4(tunAddress)}/${opts.prefix}`,
    assign: (a, realAddress, owner) => {
      const internal = device.announce(a, ipv4ToNumber(realAddress), owner.replace(/\.$/, ""));
      return internal === null ? null : numberToIpv4(internal);
    },
  });

  const shutdown = new Shutdown(log);
  const running = () => shutdown.running;
  const stop = (why: string) => shutdown.stop(why);
  const control = serveControl(opts.controlSocket, () => ({
    interface: tun.name,
    address: opts.tunAddress,
    now: now(),
    servers: [...device.servers].map((s) => ({
      name: s.name,
      keyHash: s.id,
      external: numberToIpv4(s.realAddress),
      internal: numberToIpv4(s.internal),
      state: s.state,
      tunnelId: s.session ? hex(s.session.tid).slice(0, 8) : "",
      age: s.established === undefined ? null : now() - s.established,
      lastActivity: Math.max(s.lastRx, s.lastTx) === 0
        ? null
        : now() - Math.max(s.lastRx, s.lastTx),
      txBytes: s.txBytes,
      rxBytes: s.rxBytes,
      tunnels: s.tunnels,
    })),
    dropped: drops.snapshot(),
    dns: rewriter.stats,
  }), log);

  if (!dns.trySend(new Uint8Array([MSG_READY]))) throw new Error("supervisor channel is full");
  log.info(
    `client ready: ${tun.name} ${opts.tunAddress}/${opts.prefix}, UDP port ${sock.localPort}, ` +
      `running as ${opts.user} (uid ${user.uid})`,
  );

  try {
    await Promise.all([
      dataPath.run(
        "pqconnect-client",
        running,
        (p) => device.onTunPacket(p),
        (d, host, port) => device.onDatagram(d, host, port),
      ),
      pump("pqconnect-client", running, (ms) => waitReadable(dns.fd, ms), () => {
        for (;;) {
          const m = dns.tryRecv();
          if (m === undefined) return;
          if (m === null) return stop("supervisor gone");
          const msg = decodeMessage(m);
          if (msg?.type !== "dns") {
            drops.count("channel-malformed");
            continue;
          }
          const r = rewriter.process(msg.packet);
          const verdict = encodeVerdict(msg.id, r.action === "rewrite" ? r.packet : null);
          if (!dns.trySend(verdict)) drops.count("channel-full");
        }
      }),
      (async () => {
        let seconds = 0;
        while (running()) {
          await new Promise((r) => setTimeout(r, 1000));
          device.tick();
          if (++seconds % 30 === 0) drops.report(log);
        }
      })(),
    ]);
  } finally {
    shutdown.dispose();
    control.close();
    device.close();
    for (const s of keySockets) s.close();
    sock.close();
    await pool.close().catch(() => {});
    dns.close();
    tun.close();
    drops.report(log);
  }
  return 0;
}

/** A UDP socket of its own for one key-server conversation, closed when done. */
function openKeyChannel(host: number, port: number, open: Set<UdpSocket>): KeyChannel {
  const s = UdpSocket.bind(0, 0, { maxDatagram: 2048, batch: 64 });
  open.add(s);
  return {
    send: (d) => {
      s.sendTo(d, host, port);
    },
    receive: async (timeoutMs) => {
      const got = s.recvBatch().filter((d) => d.addr === host && d.port === port);
      if (got.length === 0 && await s.waitReadable(Math.max(1, Math.ceil(timeoutMs)))) {
        got.push(...s.recvBatch().filter((d) => d.addr === host && d.port === port));
      }
      // The socket's receive slots are reused: hand out copies.
      return got.map((d) => d.data.slice());
    },
    close: () => {
      open.delete(s);
      s.close();
    },
  };
}
