// The key server side of keyfetch_bench.ts, on a thread of its own as in the daemon (whose
// packet loop blocks its thread in poll() while traffic flows).

import { KeyTree } from "../lib/core/keytree.ts";
import { EphemeralKeyStore } from "../lib/core/ephemeral.ts";
import { UdpSocket } from "../ffi/udp.ts";
import { packetLoop } from "../lib/runtime/packet_loop.ts";
import { keyServerSource } from "../lib/server/key_loop.ts";
import { DropCounters } from "../lib/core/log.ts";
import { readPublicKeys } from "../lib/runtime/keyfiles.ts";

const self = globalThis as unknown as {
  postMessage(m: unknown): void;
  onmessage: ((e: MessageEvent) => void) | null;
  close(): void;
};
const keys = readPublicKeys(new URL("../tests/fixtures/", import.meta.url).pathname);
const tree = KeyTree.build(keys.mceliecePk, keys.x25519Pk);
const server = UdpSocket.bind(0x7f000001, 0, { maxDatagram: 2048, batch: 64 });
let serving = true;
self.onmessage = () => serving = false;
self.postMessage({ port: server.localPort, root: tree.root });
await packetLoop("keys", () => serving, [
  keyServerSource(
    server,
    tree,
    new EphemeralKeyStore(),
    () => Date.now() / 1000,
    new DropCounters(),
  ),
], { flush: () => server.flush() });
server.close();
self.close();
