// `pqconnect announce`: the DNS records that make a server's name announce PQConnect.

import { type Command, parseDnsName, parseIpv4Option, parseOptions, parsePort } from "./common.ts";
import { CRYPTO_PORT, DEFAULT_KEY_DIR, KEY_PORT } from "../core/constants.ts";
import { KeyTree } from "../core/keytree.ts";
import { formatPq1Label } from "../core/names.ts";
import { readPublicKeys } from "../runtime/keyfiles.ts";

/** Zone-file lines: the name becomes a CNAME to the pq1 name, which carries the A record. */
export function announcementRecords(
  name: string,
  ip: string,
  keyHash: Uint8Array,
  ports: { crypto: number; key: number },
): string[] {
  const labels = name.split(".");
  const parent = labels.slice(1).join(".");
  const pqName = `${formatPq1Label(keyHash, ports)}.${parent}`;
  return [
    `${name}.\tIN\tCNAME\t${pqName}.`,
    `${pqName}.\tIN\tA\t${ip}`,
  ];
}

export const announceCommand: Command = {
  name: "announce",
  summary: "print the DNS records that announce a server",
  usage: `Usage: pqconnect announce --name NAME --ip A.B.C.D [--keydir DIR]
                          [--port P] [--keyport K]

Prints zone-file records that announce this server's keys under NAME: NAME
becomes a CNAME to the pq1 name (key hash and ports), which gets the A record.
Clients without PQConnect follow the CNAME and keep working.

Options:
  -n, --name NAME     the host name clients use, e.g. www.example.org
      --ip ADDRESS    the server's public IPv4 address
  -d, --keydir DIR    key directory (default ${DEFAULT_KEY_DIR})
  -p, --port P        the server's crypto port (default ${CRYPTO_PORT})
  -k, --keyport K     the server's key port (default ${KEY_PORT})
  -h, --help          show this help
      --version       show the version`,
  run(args) {
    const { values } = parseOptions(args, {
      name: { type: "string", short: "n" },
      ip: { type: "string" },
      keydir: { type: "string", short: "d", default: DEFAULT_KEY_DIR },
      port: { type: "string", short: "p" },
      keyport: { type: "string", short: "k" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(this.usage);
      return Promise.resolve(0);
    }
    const name = parseDnsName(values.name, "--name");
    const ip = parseIpv4Option(values.ip, "--ip");
    const ports = {
      crypto: parsePort(values.port, CRYPTO_PORT, "--port"),
      key: parsePort(values.keyport, KEY_PORT, "--keyport"),
    };
    const { mceliecePk, x25519Pk } = readPublicKeys(values.keydir!);
    const root = KeyTree.build(mceliecePk, x25519Pk).root;
    for (const line of announcementRecords(name, ip, root, ports)) console.log(line);
    return Promise.resolve(0);
  },
};
