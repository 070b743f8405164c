// Test helper: a throwaway dnsmasq serving a test zone, and raw DNS queries over UDP.

import dgram from "node:dgram";
import { Buffer } from "node:buffer";

export const DNSMASQ = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"].find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
});

export interface Zone {
  listen: string;
  port?: number;
  /** dnsmasq config lines after the fixed ones (host-record=, cname=, ...). */
  records: string[];
}

export interface RunningDnsmasq {
  stop(): Promise<void>;
  configPath: string;
  /** Everything dnsmasq logged so far. */
  log(): string;
}

/**
 * Starts dnsmasq in the foreground with only our zone (no upstream, no /etc/hosts), optionally
 * inside a network namespace, and waits until it answers.
 */
export async function startDnsmasq(zone: Zone, netns?: string): Promise<RunningDnsmasq> {
  if (!DNSMASQ) throw new Error("dnsmasq not installed");
  const dir = await Deno.makeTempDir({ prefix: "pqts-dnsmasq-" });
  const configPath = `${dir}/dnsmasq.conf`;
  const lines = [
    "no-resolv",
    "no-hosts",
    `listen-address=${zone.listen}`,
    "bind-interfaces",
    `port=${zone.port ?? 53}`,
    "log-facility=-", // log to stderr, so we can see when it is up
    "log-queries",
    ...zone.records,
  ];
  await Deno.writeTextFile(configPath, lines.join("\n") + "\n");
  const argv = [DNSMASQ, "--keep-in-foreground", `--conf-file=${configPath}`, "--pid-file="];
  const cmd = netns ? ["/usr/sbin/ip", "netns", "exec", netns, ...argv] : argv;
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();

  // Keep draining stderr for the whole run (log-queries writes a line per query).
  let log = "";
  let notify: () => void = () => {};
  const drained = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of child.stderr) {
      log += dec.decode(chunk, { stream: true });
      notify();
    }
    notify();
  })();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already exited */ }
    await child.status;
    await drained;
    await Deno.remove(dir, { recursive: true });
  };

  // dnsmasq logs "started" after its listening sockets exist.
  const deadline = Date.now() + 5000;
  let exited = false;
  child.status.then(() => (exited = true));
  while (!/started, version/.test(log)) {
    if (exited || Date.now() > deadline) {
      await stop().catch(() => {});
      throw new Error(`dnsmasq did not start:\n${log}`);
    }
    await new Promise<void>((r) => {
      notify = r;
      setTimeout(r, 50);
    });
  }
  return { stop, configPath, log: () => log };
}

/** Sends one raw DNS message to host:port over UDP and returns the raw answer. */
export function udpQuery(
  host: string,
  port: number,
  message: Uint8Array,
  timeoutMs = 2000,
): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`no DNS answer from ${host}:${port}`));
    }, timeoutMs);
    sock.on("message", (msg: Buffer) => {
      clearTimeout(timer);
      sock.close();
      resolve(new Uint8Array(msg));
    });
    sock.on("error", (e: Error) => {
      clearTimeout(timer);
      sock.close();
      reject(e);
    });
    sock.send(Buffer.from(message), port, host);
  });
}
