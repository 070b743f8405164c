// `pqconnect server`: accept PQConnect tunnels from clients (options as the reference's).

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
import {
  CRYPTO_PORT,
  DEFAULT_KEY_DIR,
  KEY_PORT,
  PRIVSEP_USER,
  SERVER_TUN_ADDRESS,
  TUN_PREFIX,
} from "../core/constants.ts";
import { runServer, type ServerOptions } from "../server/daemon.ts";
import { linkExists } from "../../ffi/rtnetlink.ts";

/** What `pqconnect server ARGS` asks for, before anything is touched (tested alias by alias). */
export function parseServerArgs(
  args: string[],
): { help: true } | { help: false; options: ServerOptions } {
  const { values } = parseOptions(args, {
    ...tunnelDaemonOptions(SERVER_TUN_ADDRESS, PRIVSEP_USER),
    keydir: { type: "string", short: "d", default: DEFAULT_KEY_DIR },
    keyport: { type: "string", short: "k" },
    "max-peers": { type: "string" },
  });
  if (values.help) return { help: true };
  const prefix = parsePrefix(values.mask, TUN_PREFIX, 24);
  const port = parsePort(values.port, CRYPTO_PORT, "--port");
  const keyPort = parsePort(values.keyport, KEY_PORT, "--keyport");
  if (port === keyPort) throw new UsageError("--port and --keyport must differ");
  const mtu = parseNumber(values.mtu, 1400, 576, 65000, "--mtu");
  const maxPeers = parseNumber(values["max-peers"], 65536, 1, 1 << 24, "--max-peers");
  const name = parseInterfaceName(
    interfaceOption(values.interface, values["interface-name"]) ?? "pqcserv0",
  );
  return {
    help: false,
    options: {
      keyDir: values.keydir!,
      port,
      keyPort,
      tunAddress: parseIpv4Option(values.addr, "--addr"),
      prefix,
      interfaceName: name,
      hostAddress: optionalIpv4Option(values["host-ip"], "--host-ip"),
      user: values.user!,
      mtu,
      maxPeers,
      kem: parseKemOption(values.kem!),
      verbose: values.verbose! || values["very-verbose"]!,
    },
  };
}

export const serverCommand: Command = {
  name: "server",
  summary: "run a PQConnect server (tunnel and key ports)",
  usage: `Usage: pqconnect server [OPTIONS]

Accepts PQConnect tunnels: serves the long-term and ephemeral public keys on
the key port, completes 0-RTT handshakes on the crypto port, and carries each
client's packets between the tunnel and a TUN device. Needs root to set up;
then runs as an unprivileged user.

Options:
  -d, --keydir DIR        key directory (default ${DEFAULT_KEY_DIR})
  -p, --port P            crypto (tunnel) UDP port (default ${CRYPTO_PORT})
  -k, --keyport K         key server UDP port (default ${KEY_PORT})
  -a, --addr A.B.C.D      TUN device address (default ${SERVER_TUN_ADDRESS})
  -m, --mask N            TUN prefix length, 8..24 (default ${TUN_PREFIX})
  -i, --interface NAME    TUN device name (default pqcserv0); also --interface-name
  -H, --host-ip A.B.C.D   address decrypted traffic is delivered to
                          (default: the TUN address)
      --user NAME         unprivileged user to run as (default ${PRIVSEP_USER})
      --mtu N             TUN MTU (default 1400)
      --max-peers N       tunnels kept before the idlest gets a cookie (default 65536;
                          at most the subnet's addresses less 256 kept for tunnels
                          that linger after an eviction)
      --kem auto|native|wasm
                          KEM implementation: native libmceliece/libntruprime, or
                          the WebAssembly build (default auto: native when loadable)
  -v, --verbose           log every tunnel event (also -vv, --very-verbose)
  -h, --help              show this help
      --version           show the version`,
  async run(args) {
    const request = parseServerArgs(args);
    if (request.help) {
      console.log(this.usage);
      return 0;
    }
    if (Deno.uid() !== 0) {
      throw new Error("must be started as root (it creates a TUN device, then drops privileges)");
    }
    const name = request.options.interfaceName;
    if (await linkExists(name)) {
      throw new Error(
        `interface ${name} already exists: is another pqconnect server running? Stop it ` +
          `first, or give this one another --interface and ports (nothing was changed)`,
      );
    }
    // Key files others may read or replace: runServer refuses them (readServerKeys).
    return await runServer(request.options);
  },
};
