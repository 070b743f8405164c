// The server daemon: the IO shell around ServerDevice. As root it reads the keys, creates and
// configures the TUN device, binds both UDP ports and starts the crypto worker; then it drops
// to an unprivileged user before it reads a single datagram.

import { steadyClocks } from "../runtime/clock.ts";
import { KeyTree } from "../core/keytree.ts";
import { readServerKeys, wipeServerKeys } from "../runtime/keyfiles.ts";
import { wipe } from "../core/bytes.ts";
import { EphemeralKeyStore } from "../core/ephemeral.ts";
import { CookieKeyring } from "../core/cookie.ts";
import { makeEphemeralKeys } from "./ephemeral_keys.ts";
import { Cleanup } from "../runtime/cleanup.ts";
import { formatPq1Label } from "../core/names.ts";
import { ipv4ToNumber, numberToIpv4 } from "../core/ip.ts";
import { StderrLogger } from "../runtime/log.ts";
import { installAeadBackend } from "../runtime/aead_backend.ts";
import { installHashBackend } from "../runtime/hash_backend.ts";
import { warmUp } from "../runtime/warmup.ts";
import { DataPathWarmer } from "../runtime/path_warmer.ts";
import { ServerDevice } from "./device.ts";
import { openInterface } from "../runtime/interface.ts";
import { MAX_UDP_PAYLOAD, UdpSocket } from "../../ffi/udp.ts";
import { bindCryptoPort, fitInitiationBuffer } from "./crypto_port.ts";
import { COOKIE_BYTES, TUNNEL_OVERHEAD } from "../core/constants.ts";
import { dropPrivileges, lookupUser } from "../../ffi/privdrop.ts";
import { CryptoPool } from "../runtime/crypto_pool.ts";
import type { KemChoice } from "../runtime/kem_backend.ts";
import { TunnelLoop } from "../runtime/packet_loop.ts";
import { keyServerSource } from "./key_loop.ts";
import { TickLoop } from "../runtime/tick_loop.ts";
import { Shutdown } from "../runtime/shutdown.ts";

export interface ServerOptions {
  keyDir: string;
  port: number;
  keyPort: number;
  tunAddress: string;
  prefix: number;
  interfaceName: string;
  hostAddress?: string;
  user: string;
  mtu: number;
  maxPeers: number;
  kem: KemChoice;
  verbose: boolean;
}

/**
 * Handshakes handed to each worker at once: enough to keep it busy while replies wait for the
 * event loop's turn (up to a few ms, longer when a flood keeps the packet thread busy), few
 * enough that nothing waits long inside it, where it can no longer be dropped. Native: ~0.25 ms
 * each, so 128 are ~30 ms of work (with 32 the two workers kept only ~1 of the 2 cores busy at
 * capacity: the round trips, not the KEMs, set the pace); WASM: ~100 ms each.
 */
const HANDSHAKES_PER_WORKER = { native: 128, wasm: 2 };
/**
 * Workers' replies finished per packet-loop round while datagrams wait: each creates a tunnel
 * and delivers its held packets (~tens of µs), so a round stays well under a millisecond and
 * the socket is read again before its 4 MiB buffer (~30 ms of a 5x flood) can fill. When the
 * round found nothing to read, every filed reply is finished.
 */
const REPLIES_PER_ROUND = 16;

export async function runServer(opts: ServerOptions): Promise<number> {
  const log = new StderrLogger("pqconnect-server", opts.verbose ? "debug" : "info");
  const cleanup = new Cleanup(log);
  // Signals are handled from the start. Deno's first signal listener takes a while to install,
  // and made after the serving line, a SIGTERM sent on seeing that line (a service manager's
  // stop, a test) met the default action (exit 143). A stop asked for while setting up ends the
  // start through the clean-up instead.
  const shutdown = new Shutdown(log);
  cleanup.add(() => shutdown.dispose());
  const running = () => shutdown.running;
  try {
    log.info(`AEAD backend: ${installAeadBackend()}, SHAKE256: ${installHashBackend()}`);
    // Everything that can fail on bad configuration fails here, before anything is created.
    const keys = readServerKeys(opts.keyDir);
    cleanup.add(() => wipeServerKeys(keys)); // a start that ends early wipes them too
    const tree = KeyTree.build(keys.mceliecePk, keys.x25519Pk);
    const user = lookupUser(opts.user);
    if (user.uid === 0) throw new Error(`--user ${opts.user} is root: choose an unprivileged user`);
    const tunAddress = ipv4ToNumber(opts.tunAddress);
    const hostAddress = ipv4ToNumber(opts.hostAddress ?? opts.tunAddress);

    // Nothing above waits, so a signal is first seen at the awaits below, with the interface
    // already made (TunDevice.open is synchronous): each such stop says so and cleans up.
    const tun = await openInterface(opts, cleanup);
    const stoppedWhileStarting = () => {
      if (running()) return false;
      log.info(`stopped while starting; ${tun.name} removed`);
      return true;
    };
    if (stoppedWhileStarting()) return 0;
    // Room for a tunnel packet of a full-MTU payload with a cookie in front of it.
    const maxDatagram = Math.min(
      MAX_UDP_PAYLOAD,
      Math.max(4096, opts.mtu + TUNNEL_OVERHEAD + COOKIE_BYTES),
    );
    const cryptoPort = bindCryptoPort(0, opts.port, maxDatagram);
    cleanup.add(() => cryptoPort.tunnel.close());
    cleanup.add(() => cryptoPort.initiations?.close());
    const keySock = UdpSocket.bind(0, opts.keyPort, { maxDatagram: 2048, batch: 64 });
    cleanup.add(() => keySock.close());
    // A download's answers are one size to one client: one GSO send per batch (issue 11).
    keySock.enableGso();
    keySock.enableGro();
    // One crypto worker per core, each with its own copy of the McEliece secret key (wiped when
    // the pool closes); the packet loop only posts work to them and never waits.
    const workers = Math.max(1, Math.min(16, navigator.hardwareConcurrency || 1));
    const pool = await CryptoPool.start({
      mcelieceSecretKey: keys.mcelieceSk,
      x25519SecretKey: keys.x25519Sk,
      kem: opts.kem,
      workers,
      maxPending: workers * HANDSHAKES_PER_WORKER.native + 16,
    });
    cleanup.add(() => pool.close());
    if (stoppedWhileStarting()) return 0;
    await warmUp(pool, "server");
    if (stoppedWhileStarting()) return 0;
    const inFlight = workers * HANDSHAKES_PER_WORKER[pool.backend];
    fitInitiationBuffer(cryptoPort, pool.backend);
    log.info(`KEM backend: ${pool.backend} (${workers} crypto workers)`);
    const cookies = new CookieKeyring(keys.sessionKey, crypto.getRandomValues(new Uint8Array(32)));
    wipeServerKeys(keys);

    dropPrivileges(user.uid, user.gid);
    log.info(
      `serving ${formatPq1Label(tree.root)} on UDP ${opts.port} (tunnel) and ${opts.keyPort} ` +
        `(keys); ${tun.name} ${opts.tunAddress}/${opts.prefix} mtu ${opts.mtu}; ` +
        `decrypted traffic to ${numberToIpv4(hostAddress)}; running as ${opts.user} ` +
        `(uid ${user.uid})`,
    );

    const loop = new TunnelLoop({
      tun,
      sock: cryptoPort.tunnel,
      initiations: cryptoPort.initiations,
    });
    const warmer = new DataPathWarmer(loop.finishesChecksums); // see PacketLoopOptions.warm
    cleanup.add(() => warmer.close());
    // A wall clock that never steps (lib/runtime/clock.ts), on the packet loop's clock: one
    // reading per batch of packets.
    const clock = steadyClocks(() => loop.now());
    const ephemeral = new EphemeralKeyStore();
    log.info(`data path offloads: ${loop.offloads}`);
    log.info(
      cryptoPort.initiations
        ? "initiations have a socket of their own (SO_REUSEPORT steering)"
        : "initiations share the tunnel socket: the kernel refused the steering program",
    );
    const device = new ServerDevice(
      {
        tunAddress,
        prefix: opts.prefix,
        hostAddress,
        maxPeers: opts.maxPeers,
        maxPendingHandshakes: inFlight,
        replayHashKey: crypto.getRandomValues(new Uint8Array(8)),
        cryptoWorkers: workers,
      },
      loop,
      // Whole handshakes in the workers: one round trip each (they hold the slots' secrets).
      { respondDeferred: (data, slots, done) => pool.respondDeferred(data, slots, done) },
      ephemeral,
      cookies,
      log,
      clock,
    );
    cleanup.add(() => device.close());
    if (device.maxPeers < opts.maxPeers) {
      log.info(
        `tunnels kept: ${device.maxPeers} (--max-peers ${opts.maxPeers}, but the /${opts.prefix} ` +
          `subnet's addresses also hold the tunnels that linger after an eviction)`,
      );
    }

    const random = (bytes: number) => crypto.getRandomValues(new Uint8Array(bytes));
    /** Ephemeral keys for the slots due, then the device's own timers. */
    const maintain = async () => {
      for (const slot of await makeEphemeralKeys(ephemeral, pool, clock.wall(), random)) {
        const keys = ephemeral.get(slot)!;
        await pool.addEphemeral(slot, keys.x25519Sk, keys.sntrupSk);
        // The workers run every handshake: this thread keeps only the public halves.
        wipe(keys.x25519Sk, keys.sntrupSk);
        log.debug(
          `ephemeral keys ready for the slot starting ${new Date(slot * 1000).toISOString()}`,
        );
      }
      device.tick(random(32));
      // The workers erase the secrets of the slots the tick expired.
      await pool.keepEphemeral(ephemeral.slotIds());
    };
    await maintain();

    let reported = clock.mono();
    // What the kernel shed at full receive buffers is counted beside our own drops: under a
    // flood most initiations end there, unread (issue 8), and a log should say so.
    const reportDrops = () => {
      const shed = cryptoPort.initiations?.kernelDrops();
      if (shed != null) device.drops.setTotal("initiation-shed-by-kernel", shed);
      const tunnel = cryptoPort.tunnel.kernelDrops();
      if (tunnel != null) device.drops.setTotal("datagram-shed-by-kernel", tunnel);
      device.drops.report(log);
    };
    const ticks = new TickLoop("pqconnect-server", clock.mono, async () => {
      try {
        await maintain();
      } catch (e) {
        log.error(`periodic maintenance failed: ${e}`);
      }
      if (clock.mono() - reported >= 30) {
        reported = clock.mono();
        reportDrops();
      }
    });
    const pumps = [
      loop.run(
        "pqconnect-server",
        running,
        (p) => device.onTunPacket(p),
        (d, host, port) => device.onDatagram(d, host, port),
        {
          drops: device.drops,
          warm: warmer.warm,
          // Awake while handshakes are out: their replies arrive in the loop's turns.
          work: (busy) =>
            pool.finishDeferred(busy ? REPLIES_PER_ROUND : Infinity) > 0 || pool.outstanding > 0,
          // A worker's reply is taken as it comes, not at the next turn that dispatches it.
          awaitingWorker: () => pool.outstanding > 0,
          sources: [keyServerSource(keySock, tree, ephemeral, clock.wall, device.drops)],
          // Initiations past the queue's room would be refused: leave them to the kernel (issue 8).
          initiationRoom: () => device.initiationRoom,
        },
      ),
      ticks.run(running),
    ];
    await Promise.all(pumps);
    reportDrops();
    log.info(`data path: ${loop.summary()}`);
    log.info(`stopped after ${device.handshakes} handshakes; ${tun.name} removed`);
    return 0;
  } finally {
    await cleanup.run();
  }
}
