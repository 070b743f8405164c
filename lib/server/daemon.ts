// The server daemon: the IO shell around ServerDevice. As root it reads the keys, creates and
// configures the TUN device, binds both UDP ports and starts the crypto worker; then it drops
// to an unprivileged user before it reads a single datagram.

import { KeyTree } from "../core/keytree.ts";
import { readServerKeys, wipeServerKeys } from "../runtime/keyfiles.ts";
import { EphemeralKeyStore } from "../core/ephemeral.ts";
import { CookieKeyring } from "../core/cookie.ts";
import { x25519PublicKey } from "../core/crypto.ts";
import { answerKeyRequest } from "../core/keyserver.ts";
import { formatPq1Label } from "../core/names.ts";
import { ipv4ToNumber, numberToIpv4 } from "../core/ip.ts";
import { StderrLogger } from "../runtime/log.ts";
import { installAeadBackend } from "../runtime/aead_backend.ts";
import { ServerDevice } from "./device.ts";
import { TunDevice } from "../../ffi/tun.ts";
import { configureInterface } from "../../ffi/rtnetlink.ts";
import { MAX_UDP_PAYLOAD, UdpSocket } from "../../ffi/udp.ts";
import { COOKIE_BYTES, TUNNEL_OVERHEAD } from "../core/constants.ts";
import { dropPrivileges, lookupUser } from "../../ffi/privdrop.ts";
import { CryptoPool } from "../runtime/crypto_pool.ts";
import type { KemChoice } from "../runtime/kem_backend.ts";
import { pump, TunnelLoop } from "../runtime/packet_loop.ts";
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
 * event loop's turn (up to a few ms), few enough that nothing waits long inside it, where it
 * can no longer be dropped. Native: ~0.15 ms each; WASM: ~100 ms each.
 */
const HANDSHAKES_PER_WORKER = { native: 32, wasm: 2 };

export async function runServer(opts: ServerOptions): Promise<number> {
  const log = new StderrLogger("pqconnect-server", opts.verbose ? "debug" : "info");
  log.info(`AEAD backend: ${installAeadBackend()}`);
  // Everything that can fail on bad configuration fails here, before anything is created.
  const keys = readServerKeys(opts.keyDir);
  const tree = KeyTree.build(keys.mceliecePk, keys.x25519Pk);
  const user = lookupUser(opts.user);
  if (user.uid === 0) throw new Error(`--user ${opts.user} is root: choose an unprivileged user`);
  const tunAddress = ipv4ToNumber(opts.tunAddress);
  const hostAddress = ipv4ToNumber(opts.hostAddress ?? opts.tunAddress);

  // Undone in reverse order on every exit path; awaited, so the crypto worker has wiped the
  // McEliece secret key before the process ends.
  const closers: (() => void | Promise<void>)[] = [];
  const closeAll = async () => {
    for (const close of closers.reverse()) {
      try {
        await close();
      } catch { /* closing what is left matters more than one failure */ }
    }
  };
  try {
    const tun = TunDevice.open(opts.interfaceName);
    closers.push(() => tun.close());
    await configureInterface(tun.name, {
      address: ipv4ToNumber(opts.tunAddress),
      prefix: opts.prefix,
      mtu: opts.mtu,
    });
    // Room for a tunnel packet of a full-MTU payload with a cookie in front of it.
    const maxDatagram = Math.min(
      MAX_UDP_PAYLOAD,
      Math.max(4096, opts.mtu + TUNNEL_OVERHEAD + COOKIE_BYTES),
    );
    const cryptoSock = UdpSocket.bind(0, opts.port, { maxDatagram });
    closers.push(() => cryptoSock.close());
    const keySock = UdpSocket.bind(0, opts.keyPort, { maxDatagram: 2048, batch: 16 });
    closers.push(() => keySock.close());
    // One crypto worker per core, each with its own copy of the McEliece secret key (wiped when
    // the pool closes); the packet loop only posts work to them and never waits.
    const workers = Math.max(1, Math.min(16, navigator.hardwareConcurrency || 1));
    const pool = await CryptoPool.start({
      mcelieceSecretKey: keys.mcelieceSk,
      kem: opts.kem,
      workers,
      maxPending: workers * HANDSHAKES_PER_WORKER.native + 16,
    });
    closers.push(() => pool.close());
    const inFlight = workers * HANDSHAKES_PER_WORKER[pool.backend];
    log.info(`KEM backend: ${pool.backend} (${workers} crypto workers)`);
    const cookies = new CookieKeyring(keys.sessionKey, crypto.getRandomValues(new Uint8Array(32)));
    const x25519Sk = keys.x25519Sk.slice();
    wipeServerKeys(keys);

    dropPrivileges(user.uid, user.gid);
    log.info(
      `serving ${formatPq1Label(tree.root)} on UDP ${opts.port} (tunnel) and ${opts.keyPort} ` +
        `(keys); ${tun.name} ${opts.tunAddress}/${opts.prefix} mtu ${opts.mtu}; ` +
        `decrypted traffic to ${numberToIpv4(hostAddress)}; running as ${opts.user} ` +
        `(uid ${user.uid})`,
    );

    const t0 = performance.now();
    const clock = {
      mono: () => (performance.now() - t0) / 1000,
      wall: () => Date.now() / 1000,
    };
    const ephemeral = new EphemeralKeyStore();
    const loop = new TunnelLoop({ tun, sock: cryptoSock });
    const device = new ServerDevice(
      {
        x25519Sk,
        tunAddress,
        prefix: opts.prefix,
        hostAddress,
        maxPeers: opts.maxPeers,
        maxPendingHandshakes: inFlight,
      },
      loop,
      {
        mcelieceDecap: (c0) => pool.mcelieceDecap(c0),
        sntrupDecap: (ct, sk) => pool.sntrupDecap(ct, sk),
      },
      ephemeral,
      cookies,
      log,
      clock,
    );
    closers.push(() => device.close());

    const makeEphemeralKeys = async () => {
      for (const slot of ephemeral.due(clock.wall())) {
        const kp = await pool.sntrupKeypair();
        const x25519Sk = crypto.getRandomValues(new Uint8Array(32));
        ephemeral.add({
          slot,
          sntrupPk: kp.publicKey,
          sntrupSk: kp.secretKey,
          x25519Pk: x25519PublicKey(x25519Sk),
          x25519Sk,
        });
        log.debug(
          `ephemeral keys ready for the slot starting ${new Date(slot * 1000).toISOString()}`,
        );
      }
    };
    await makeEphemeralKeys();
    device.tick(crypto.getRandomValues(new Uint8Array(32)));

    const shutdown = new Shutdown(log);
    closers.push(() => shutdown.dispose());
    const running = () => shutdown.running;

    const keyDrops = device.drops;
    let reported = clock.mono();
    const ticks = new TickLoop("pqconnect-server", clock.mono, async () => {
      try {
        await makeEphemeralKeys();
        device.tick(crypto.getRandomValues(new Uint8Array(32)));
      } catch (e) {
        log.error(`periodic maintenance failed: ${e}`);
      }
      if (clock.mono() - reported >= 30) {
        reported = clock.mono();
        device.drops.report(log);
      }
    });
    const pumps = [
      loop.run(
        "pqconnect-server",
        running,
        (p) => device.onTunPacket(p),
        (d, host, port) => device.onDatagram(d, host, port),
      ),
      pump("pqconnect-server", running, (ms) => keySock.waitReadable(ms), () => {
        const now = clock.wall();
        for (const d of keySock.recvBatch()) {
          const answer = answerKeyRequest(d.data, tree, ephemeral, now);
          if (answer.ok) keySock.sendTo(answer.response, d.addr, d.port);
          else keyDrops.count(`key-${answer.reason}`);
        }
      }),
      ticks.run(running),
    ];
    await Promise.all(pumps);
    device.drops.report(log);
    log.info(`stopped after ${device.handshakes} handshakes; ${tun.name} removed`);
    return 0;
  } finally {
    await closeAll();
  }
}
