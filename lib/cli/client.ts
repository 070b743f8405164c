// `pqconnect client` and its worker, and `pqconnect status`.

import {
  type Command,
  interfaceOption,
  optionalIpv4Option,
  parseInterfaceName,
  parseIpv4Option,
  parseKemOption,
  parseNumber,
  parseOptions,
  parsePort,
  parsePrefix,
  tunnelDaemonOptions,
  UsageError,
} from "./common.ts";
import { CLIENT_PORT, CLIENT_TUN_ADDRESS, PRIVSEP_USER, TUN_PREFIX } from "../core/constants.ts";
import { type ClientOptions, CONTROL_SOCKET, runClient } from "../client/supervisor.ts";
import { runClientWorker } from "../client/worker.ts";
import { queryControl } from "../client/control.ts";
import { escapeText } from "../core/log.ts";
import { linkExists } from "../../ffi/rtnetlink.ts";

export const DEFAULT_RUNTIME_DIR = "/run/pqconnect-ts";

/** What `pqconnect client ARGS` asks for, before anything is touched (tested alias by alias). */
export type ClientRequest =
  | { kind: "help" }
  | { kind: "show"; runtimeDir: string }
  | { kind: "run"; options: ClientOptions };

export function parseClientArgs(args: string[]): ClientRequest {
  const { values } = parseOptions(args, {
    ...tunnelDaemonOptions(CLIENT_TUN_ADDRESS, PRIVSEP_USER),
    queue: { type: "string" },
    "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
    precompute: { type: "string" },
    "allow-app-dns": { type: "boolean", default: false },
    // The reference's `pqconnect --show`: the same as `pqconnect status`.
    show: { type: "boolean", default: false },
  });
  if (values.help) return { kind: "help" };
  if (values.show) return { kind: "show", runtimeDir: values["runtime-dir"]! };
  const prefix = parsePrefix(values.mask, TUN_PREFIX, 24);
  const name = parseInterfaceName(
    interfaceOption(values.interface, values["interface-name"]) ?? "pqccli0",
  );
  return {
    kind: "run",
    options: {
      port: parsePort(values.port, CLIENT_PORT, "--port"),
      tunAddress: parseIpv4Option(values.addr, "--addr"),
      prefix,
      interfaceName: name,
      user: values.user!,
      mtu: parseNumber(values.mtu, 1400, 576, 65000, "--mtu"),
      queueNum: parseNumber(values.queue, 4242, 0, 65535, "--queue"),
      runtimeDir: values["runtime-dir"]!,
      precomputed: parseNumber(values.precompute, 8, 0, 360, "--precompute"),
      kem: parseKemOption(values.kem!),
      canary: !values["allow-app-dns"],
      verbose: values.verbose! || values["very-verbose"]!,
      hostAddress: optionalIpv4Option(values["host-ip"], "--host-ip"),
    },
  };
}

export const clientCommand: Command = {
  name: "client",
  summary: "tunnel every connection to servers that announce PQConnect",
  usage: `Usage: pqconnect client [OPTIONS]

Watches the DNS answers this machine receives. A name that announces PQConnect
gets an internal address; traffic to it goes through a post-quantum tunnel made
at once (0-RTT), and packets sent before the tunnel is up are held, not lost.
Other names are left alone. Needs root to set up; then runs as an unprivileged
user. Stop with SIGINT or SIGTERM: the interface and firewall rule go with it.

Options:
  -p, --port P            client UDP port (default ${CLIENT_PORT})
  -a, --addr A.B.C.D      TUN device address (default ${CLIENT_TUN_ADDRESS})
  -m, --mask N            TUN prefix length, 8..24 (default ${TUN_PREFIX})
  -i, --interface NAME    TUN device name (default pqccli0); also --interface-name
  -H, --host-ip A.B.C.D   address packets from servers are delivered to (default:
                          the TUN address), for a client on a router or VM
      --user NAME         unprivileged user to run as (default ${PRIVSEP_USER})
      --mtu N             TUN MTU (default 1400)
      --queue N           netfilter queue number for DNS answers (default 4242)
      --runtime-dir DIR   where the control socket lives (default ${DEFAULT_RUNTIME_DIR})
      --precompute N      McEliece ciphertexts kept ready per server (default 8)
      --kem auto|native|wasm
                          KEM implementation (default auto: native when loadable)
      --allow-app-dns     leave the canary use-application-dns.net alone; by default it is
                          answered NXDOMAIN so browsers keep their own DNS over HTTPS off
                          (DNS they resolve themselves is never seen, so never protected)
  -v, --verbose           log every tunnel event (also -vv, --very-verbose)
      --show              show the running client's tunnels (as pqconnect status)
  -h, --help              show this help
      --version           show the version`,
  async run(args) {
    const request = parseClientArgs(args);
    if (request.kind === "help") {
      console.log(this.usage);
      return 0;
    }
    if (request.kind === "show") {
      return await statusCommand.run(["--runtime-dir", request.runtimeDir]);
    }
    if (Deno.uid() !== 0) {
      throw new Error("must be started as root (it creates a TUN device and a DNS queue rule)");
    }
    // Checked before anything is touched: a second client would first take the running one's
    // DNS queue rule and control socket for an earlier run's leftovers and remove them.
    const name = request.options.interfaceName;
    if (await linkExists(name)) {
      throw new Error(
        `interface ${name} already exists: is another pqconnect client running? Stop it ` +
          `first, or give this one another --interface (nothing was changed)`,
      );
    }
    return await runClient(request.options);
  },
};

/** Started by the client's supervisor only, with descriptors 3 (TUN) and 4 (channel). */
export const clientWorkerCommand: Command = {
  name: "client-worker",
  summary: "(internal) the client's unprivileged worker",
  usage: "Usage: pqconnect client-worker (started by `pqconnect client`, not by hand)",
  async run(args) {
    const { values } = parseOptions(args, {
      "tun-fd": { type: "string" },
      "dns-fd": { type: "string" },
      port: { type: "string" },
      addr: { type: "string" },
      mask: { type: "string" },
      user: { type: "string" },
      control: { type: "string" },
      precompute: { type: "string" },
      kem: { type: "string", default: "auto" },
      "host-ip": { type: "string" },
      "no-canary": { type: "boolean", default: false },
      verbose: { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(this.usage);
      return 0;
    }
    if (
      values["tun-fd"] === undefined || values.control === undefined || values.user === undefined
    ) {
      throw new UsageError("client-worker is started by `pqconnect client`, not by hand");
    }
    return await runClientWorker({
      tunFd: parseNumber(values["tun-fd"], 3, 0, 1 << 20, "--tun-fd"),
      dnsFd: parseNumber(values["dns-fd"], 4, 0, 1 << 20, "--dns-fd"),
      port: parsePort(values.port, CLIENT_PORT, "--port"),
      tunAddress: parseIpv4Option(values.addr ?? CLIENT_TUN_ADDRESS, "--addr"),
      prefix: parsePrefix(values.mask, TUN_PREFIX),
      user: values.user,
      controlSocket: values.control,
      precomputed: parseNumber(values.precompute, 8, 0, 360, "--precompute"),
      kem: parseKemOption(values.kem!),
      canary: !values["no-canary"],
      verbose: values.verbose!,
      hostAddress: optionalIpv4Option(values["host-ip"], "--host-ip"),
    });
  },
};

export const statusCommand: Command = {
  name: "status",
  summary: "show the running client's tunnels",
  usage: `Usage: pqconnect status [--runtime-dir DIR] [--json]

Lists the servers the running client knows: name, external and internal
address, state, tunnel id prefix, age, idle time and bytes each way.

Options:
      --runtime-dir DIR   the client's runtime directory (default ${DEFAULT_RUNTIME_DIR})
      --json              print the raw status document
  -h, --help              show this help
      --version           show the version`,
  async run(args) {
    const { values } = parseOptions(args, {
      "runtime-dir": { type: "string", default: DEFAULT_RUNTIME_DIR },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(this.usage);
      return 0;
    }
    const path = `${values["runtime-dir"]}/${CONTROL_SOCKET}`;
    let status: StatusDocument;
    try {
      status = await queryControl(path) as StatusDocument;
    } catch (e) {
      throw new Error(`no running client answers at ${path}: ${(e as Error).message}`);
    }
    if (values.json) {
      console.log(JSON.stringify(status, null, 2));
      return 0;
    }
    console.log(formatStatus(status));
    return 0;
  },
};

interface StatusDocument {
  interface: string;
  address: string;
  servers: {
    name: string;
    external: string;
    internal: string;
    state: string;
    tunnelId: string;
    age: number | null;
    lastActivity: number | null;
    txBytes: number;
    rxBytes: number;
  }[];
}

function seconds(s: number | null): string {
  if (s === null) return "-";
  if (s < 120) return `${s.toFixed(0)}s`;
  return `${(s / 60).toFixed(0)}m`;
}

export function formatStatus(st: StatusDocument): string {
  const header = [
    "SERVER",
    "EXTERNAL",
    "INTERNAL",
    "STATE",
    "TUNNEL",
    "AGE",
    "IDLE",
    "SENT",
    "RECEIVED",
  ];
  // Every cell from the worker is escaped: a name may hold any byte a DNS label can.
  const cell = (v: unknown) => escapeText(String(v ?? "-"), 120).replaceAll(" ", "\\x20");
  const rows = st.servers.map((s) =>
    [
      s.name,
      s.external,
      s.internal,
      s.state,
      s.tunnelId || "-",
      seconds(s.age),
      seconds(s.lastActivity),
      String(s.txBytes),
      String(s.rxBytes),
    ].map(cell)
  );
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  return [
    `${cell(st.interface)} ${cell(st.address)}: ${st.servers.length} server(s)`,
    line(header),
    ...rows.map(line),
  ].join("\n");
}
