// One tunnel in the lab, for the tests of issue 10 (lossy link, crashes, soak) and the attack
// tests (floods, an attacker on the link, replays): our server in the server namespace, our
// client in the client namespace, dnsmasq announcing the server as www.lab.test, an HTTP server
// or an iperf3 server (or both) behind the tunnel, and optionally our fault-injecting UDP relay
// (./udp_relay.ts) on a second address of the server namespace: the announcement then points
// at the relay, so every key request, handshake and tunnel packet crosses it.

import {
  createLab,
  destroyLab,
  type Lab,
  labLeftovers,
  type LabProcess,
  run,
  spawn,
} from "../lab/netns.ts";
import { type Dnsmasq, mergeZones, startDnsmasq } from "../lab/dnsmasq.ts";
import {
  announceZone,
  cacheDependencies,
  copyFixtureKeys,
  denoEnv,
  ensurePrivsepUser,
  logs,
  type OurClient,
  type OurServerOptions,
  PROJECT_DIR,
  removeStaleTempDirs,
  startHttpServer,
  startOurClient,
  startOurServer,
  Teardown,
} from "./lab_util.ts";

export const HTTP_PORT = 8080;
export const RELAY_ADDR = "198.18.0.3";
/** Where the server listens when the relay is in front of it (on the announced ports). */
const BACK_PORTS = { crypto: 42444, key: 42445 };
/** The relay's port for the baseline tunnel without cryptography (./plain_tunnel.ts). */
const PLAIN_PORTS = { front: 42426, back: 42446 };
export const PLAIN_SERVER_ADDR = "10.99.0.1";
export interface Faults {
  loss: number;
  duplicate: number;
  reorder: number;
  delayMs: number;
  jitterMs: number;
}

export const NO_FAULTS: Faults = { loss: 0, duplicate: 0, reorder: 0, delayMs: 0, jitterMs: 0 };

export class TunnelLab {
  server: LabProcess | null = null;
  client: OurClient | null = null;
  http: LabProcess | null = null;
  iperf: LabProcess | null = null;
  dns: Dnsmasq | null = null;
  relay: LabProcess | null = null;
  readonly runtimeDir: string;
  readonly url = `http://www.lab.test:${HTTP_PORT}/`;
  serverOpts!: OurServerOptions;

  private constructor(
    readonly lab: Lab,
    readonly work: string,
    readonly keyDir: string,
    private readonly controlFile: string,
  ) {
    this.runtimeDir = `/run/${lab.prefix}`;
  }

  static async start(
    prefix: string,
    opts: {
      relay?: Faults;
      serverExtra?: string[];
      /** Changes to the fresh lab before anything binds its addresses. */
      prepare?: (lab: Lab) => Promise<void>;
      /** The HTTP server on HTTP_PORT (default) and an iperf3 server (default none). */
      http?: boolean;
      iperf?: boolean;
    } = {},
  ): Promise<TunnelLab> {
    await cacheDependencies();
    await ensurePrivsepUser();
    const lab = await createLab({ prefix });
    await removeStaleTempDirs([`${prefix}-`]);
    const work = await Deno.makeTempDir({ prefix: `${prefix}-` });
    const t = new TunnelLab(lab, work, `${work}/keys`, `${work}/relay.json`);
    try {
      await opts.prepare?.(lab);
      await Deno.remove(t.runtimeDir, { recursive: true }).catch(() => {});
      await Deno.mkdir(t.keyDir, { mode: 0o700 });
      await copyFixtureKeys(t.keyDir);
      let target = lab.serverAddr;
      if (opts.relay) {
        await run(null, [
          "ip",
          "-n",
          lab.serverNs,
          "addr",
          "add",
          `${RELAY_ADDR}/${lab.prefixLen}`,
          "dev",
          lab.serverIf,
        ]);
        await t.setFaults(opts.relay);
        t.relay = await t.startRelay();
        target = RELAY_ADDR;
      }
      const announced = await announceZone(t.keyDir, "www.lab.test", target, {
        crypto: 42424,
        key: 42425,
      });
      t.dns = await startDnsmasq({
        ns: lab.serverNs,
        listen: lab.serverAddr,
        zone: mergeZones(announced.zone),
      });
      t.serverOpts = {
        keyDir: t.keyDir,
        port: opts.relay ? BACK_PORTS.crypto : 42424,
        keyPort: opts.relay ? BACK_PORTS.key : 42425,
        hostIp: lab.serverAddr,
        extra: opts.serverExtra,
      };
      t.server = await startOurServer(lab.serverNs, t.serverOpts);
      if (opts.http ?? true) t.http = await startHttpServer(lab.serverNs, HTTP_PORT);
      if (opts.iperf) {
        t.iperf = spawn(lab.serverNs, ["iperf3", "-s", "-B", "0.0.0.0", "--forceflush"], {
          name: "iperf3 -s",
        });
        await t.iperf.waitFor("Server listening", 10_000);
      }
      t.client = await startOurClient(lab.clientNs, t.runtimeDir);
    } catch (e) {
      await t.stop(e);
    }
    return t;
  }

  private async startRelay(): Promise<LabProcess> {
    const p = spawn(this.lab.serverNs, [
      Deno.execPath(),
      "run",
      "--no-prompt",
      `--config=${PROJECT_DIR}/deno.json`,
      "--unstable-net",
      `--allow-net=${RELAY_ADDR},${this.lab.serverAddr},${this.lab.clientAddr}`,
      `--allow-read=${this.controlFile}`,
      `${PROJECT_DIR}/tests/helpers/udp_relay.ts`,
      "--listen",
      RELAY_ADDR,
      "--upstream",
      this.lab.serverAddr,
      "--ports",
      `42424:${BACK_PORTS.crypto},42425:${BACK_PORTS.key},${PLAIN_PORTS.front}:${PLAIN_PORTS.back}`,
      "--control",
      this.controlFile,
      "--seed",
      "10",
    ], { name: `udp relay@${this.lab.serverNs}`, env: denoEnv(), maxLogChars: 256 * 1024 });
    await p.waitFor("relaying", 30_000);
    return p;
  }

  /**
   * The baseline: a tunnel without cryptography through the same relay (./plain_tunnel.ts),
   * 10.99.0.2 in the client namespace to 10.99.0.1 in the server's, where the HTTP server
   * answers too. Same MTU as our tunnel's TUN devices (1400).
   */
  async startPlainTunnel(): Promise<{ url: string; stop: () => Promise<void> }> {
    const start = (ns: string, args: string[]) =>
      spawn(ns, [
        Deno.execPath(),
        "run",
        "--no-prompt",
        `--config=${PROJECT_DIR}/deno.json`,
        "--unstable-net",
        "--allow-all", // a TUN device and rtnetlink, as root in a lab namespace
        `${PROJECT_DIR}/tests/helpers/plain_tunnel.ts`,
        "--mtu",
        "1400",
        ...args,
      ], { name: `plain tunnel@${ns}`, env: denoEnv() });
    const server = start(this.lab.serverNs, [
      "--address",
      PLAIN_SERVER_ADDR,
      "--listen",
      `${this.lab.serverAddr}:${PLAIN_PORTS.back}`,
    ]);
    const client = start(this.lab.clientNs, [
      "--address",
      "10.99.0.2",
      "--listen",
      `${this.lab.clientAddr}:0`,
      "--to",
      `${RELAY_ADDR}:${PLAIN_PORTS.front}`,
    ]);
    const stop = async () => {
      await client.stop("SIGTERM", 3000).catch(() => {});
      await server.stop("SIGTERM", 3000).catch(() => {});
    };
    try {
      await server.waitFor(" up", 30_000);
      await client.waitFor(" up", 30_000);
    } catch (e) {
      await stop();
      throw e;
    }
    return { url: `http://${PLAIN_SERVER_ADDR}:${HTTP_PORT}/`, stop };
  }

  /** The relay's faults from now on (it rereads them within 100 ms). */
  async setFaults(f: Faults): Promise<void> {
    const tmp = `${this.controlFile}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(f));
    await Deno.rename(tmp, this.controlFile);
  }

  /** The relay's last counters line. */
  relayStats(): Record<string, unknown> | null {
    const line = this.relay?.output().split("\n").filter((l) => l.startsWith("RELAY ")).at(-1);
    return line ? JSON.parse(line.slice(6)) : null;
  }

  /** Log lines at error level of both daemons. */
  errorLines(): string[] {
    const text = `${this.server?.output() ?? ""}\n${this.client?.process.output() ?? ""}`;
    return text.split("\n").filter((l) => / error: /.test(l));
  }

  logs(lines = 40): string {
    return logs({
      "our client": this.client?.process.output(),
      server: this.server?.output(),
      relay: this.relay?.output(),
      dnsmasq: this.dns?.log(),
    }, lines);
  }

  /** Stops everything and removes the lab; rethrows `failure` (or a cleanup error). */
  async stop(failure: unknown = null): Promise<void> {
    if (Deno.env.get("PQTS_LAB_LOGS")) console.log(this.logs(100_000));
    const td = new Teardown();
    await td.attempt("stop client", () => this.client?.process.stop("SIGTERM", 10_000));
    await td.attempt("stop server", () => this.server?.stop("SIGTERM", 10_000));
    await td.attempt("stop relay", () => this.relay?.stop("SIGTERM", 3000));
    await td.attempt("stop http", () => this.http?.stop());
    await td.attempt("stop iperf3", () => this.iperf?.stop());
    await td.attempt("stop dnsmasq", () => this.dns?.stop());
    await td.attempt("destroy lab", () => destroyLab(this.lab.prefix));
    await td.attempt(
      "runtime dir",
      () => Deno.remove(this.runtimeDir, { recursive: true }).catch(() => {}),
    );
    await td.attempt("work dir", () => Deno.remove(this.work, { recursive: true }));
    await td.attempt("lab leftovers", async () => {
      const left = await labLeftovers(this.lab.prefix);
      if (left.length) throw new Error(`left behind: ${left.join(", ")}`);
    });
    td.finish(failure);
  }

  async restartServer(): Promise<void> {
    this.server = await startOurServer(this.lab.serverNs, this.serverOpts);
  }
}
