// `pqconnect check HOSTNAME`: is this server reachable and announced right, as a client sees
// it? Runs without root: plain UDP sockets, no TUN, no firewall.

import { type Command, parseDnsName, parseNumber, UsageError } from "./common.ts";
import { parseArgs } from "node:util";
import { parseIpv4Address } from "../core/ip.ts";
import { DEFAULT_FALLBACK_KEY_PORTS, runCheck } from "../check/run.ts";
import { realCheckIo } from "../check/io.ts";
import { formatReport } from "../check/report.ts";
import { EPOCH_SECONDS } from "../core/constants.ts";

export const checkCommand: Command = {
  name: "check",
  summary: "check a server end to end as a client sees it (no root needed)",
  usage: `Usage: pqconnect check HOSTNAME [--dns-only] [-d KEYDIR] [--json] [--port N]

Checks a PQConnect server from this machine, step by step, each with its time
and verdict: the DNS announcement (CNAME, pq1 label, key hash, ports); with -d,
that the local keys are the announced ones; the long-term key download, every
part verified against the hash; the ephemeral key and its rotation; a real
0-RTT handshake followed by one packet inside the tunnel that the server's
host must answer (an ICMP echo, or a TCP SYN with --port). Needs no root.

Options:
      --dns-only          stop after the DNS (and -d) steps: no packets to the server
  -d, --keydir DIR        the server's own key directory: its keys must match DNS
      --port N            probe TCP port N inside the tunnel (default: ICMP echo)
      --json              print the report as JSON
      --nameserver IP     ask this DNS server instead of the system's
      --timeout S         seconds to wait for an answer inside the tunnel (default 5)
      --key-timeout S     seconds a key download may take (default 20)
      --rotation          wait until ${EPOCH_SECONDS + 1} s after the first ephemeral key fetch and
                          fetch again: a server handing out the same key is stale
  -h, --help              show this help
      --version           show the version

Exit status: 0 every step passed; 2 bad usage; 3 DNS (no name, no pq1 label,
no ports); 4 local keys differ from DNS; 5 nothing answers on the key port
(server stopped or port filtered); 6 a key server answers on another port than
announced; 7 the server's keys do not match the announced hash; 8 no or stale
ephemeral key; 9 no answer inside the tunnel; 1 anything else.`,
  async run(args) {
    const { values, positionals } = parseCheckArgs(args);
    if (values.help) {
      console.log(this.usage);
      return 0;
    }
    if (positionals.length !== 1) throw new UsageError("give exactly one HOSTNAME to check");
    const host = parseDnsName(positionals[0], "HOSTNAME");
    let nameServer: { ipAddr: string; port: number } | undefined;
    if (values.nameserver !== undefined) {
      if (parseIpv4Address(values.nameserver) === null) {
        throw new UsageError(`--nameserver must be an IPv4 address, not "${values.nameserver}"`);
      }
      nameServer = { ipAddr: values.nameserver, port: 53 };
    }
    const report = await runCheck({
      host,
      dnsOnly: values["dns-only"]!,
      keyDir: values.keydir,
      tcpPort: values.port === undefined
        ? undefined
        : parseNumber(values.port, 0, 1, 65535, "--port"),
      tunnelTimeout: parseNumber(values.timeout, 5, 1, 120, "--timeout"),
      keyTimeout: parseNumber(values["key-timeout"], 20, 1, 600, "--key-timeout"),
      rotationWait: values.rotation ? EPOCH_SECONDS + 1 : 0,
      fallbackKeyPorts: DEFAULT_FALLBACK_KEY_PORTS,
    }, realCheckIo({ nameServer }));
    console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
    return report.exit;
  },
};

/** Like parseOptions, with one positional argument (the host name). */
function parseCheckArgs(args: string[]) {
  try {
    return parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        "dns-only": { type: "boolean", default: false },
        keydir: { type: "string", short: "d" },
        port: { type: "string" },
        json: { type: "boolean", default: false },
        nameserver: { type: "string" },
        timeout: { type: "string" },
        "key-timeout": { type: "string" },
        rotation: { type: "boolean", default: false },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}
