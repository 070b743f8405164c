// `pqconnect keygen`: a new long-term server key set in the reference's file format.

import { type Command, parseOptions } from "./common.ts";
import { DEFAULT_KEY_DIR } from "../core/constants.ts";
import { KeyTree } from "../core/keytree.ts";
import { formatPq1Label } from "../core/names.ts";
import {
  makeKeyDir,
  refuseOverwrite,
  wipeServerKeys,
  writeServerKeys,
} from "../runtime/keyfiles.ts";
import { x25519PublicKey } from "../core/crypto.ts";
import { loadKemBackend } from "../runtime/kem_backend.ts";

export const keygenCommand: Command = {
  name: "keygen",
  summary: "create a server's long-term keys",
  usage: `Usage: pqconnect keygen [--keydir DIR] [--force]

Creates the five key files of a PQConnect server (mceliece_pk, mceliece_sk,
x25519_pk, x25519_sk, session_key) in the reference implementation's format,
then prints the server's pq1 name.

Options:
  -d, --keydir DIR  key directory (default ${DEFAULT_KEY_DIR})
      --force       replace existing keys (this changes the server's pq1 name)
  -h, --help        show this help
      --version     show the version`,
  async run(args) {
    const { values } = parseOptions(args, {
      keydir: { type: "string", short: "d", default: DEFAULT_KEY_DIR },
      force: { type: "boolean", default: false },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(this.usage);
      return 0;
    }
    const dir = values.keydir!;
    // A directory that cannot be made fails now, not after the key generation.
    makeKeyDir(dir);
    if (!values.force) refuseOverwrite(dir);
    const started = performance.now();
    // Native libmceliece when it loads (~0.1 s), else liboqs WASM (tens of seconds).
    const backend = await loadKemBackend("auto");
    console.error(
      `generating a Classic McEliece 6960119 key pair with the ${backend.name} KEMs` +
        (backend.name === "wasm" ? " (this takes a while)" : "") + " ...",
    );
    const mc = backend.mceliece.keypair();
    const x25519Sk = crypto.getRandomValues(new Uint8Array(32));
    const keys = {
      mceliecePk: mc.publicKey,
      mcelieceSk: mc.secretKey,
      x25519Pk: x25519PublicKey(x25519Sk),
      x25519Sk,
      sessionKey: crypto.getRandomValues(new Uint8Array(32)),
    };
    try {
      writeServerKeys(dir, keys, values.force!);
    } finally {
      wipeServerKeys(keys);
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const label = formatPq1Label(KeyTree.build(keys.mceliecePk, keys.x25519Pk).root);
    console.log(`keys written to ${dir} (${seconds} s); secret files are mode 0600`);
    console.log(`this server's pq1 label: ${label}`);
    console.log(`next: pqconnect announce --keydir ${dir} --name <your host name> --ip <its IPv4>`);
    console.log(`      prints the DNS records to publish; then start: pqconnect server -d ${dir}`);
    return 0;
  },
};
