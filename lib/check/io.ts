// The real IO behind `pqconnect check`: the system resolver, plain unprivileged UDP sockets
// (node:dgram, so no FFI and no root), the key files, and the KEMs in WebAssembly in this
// process (one encapsulation each: no worker needed).

import dgram from "node:dgram";
import { x25519 } from "@noble/curves/ed25519.js";
import { readPublicKeys } from "../runtime/keyfiles.ts";
import { loadMcEliece6960119, loadSntrup761 } from "../../wasm/kem.ts";
import type { CheckIo, Datagram, UdpPort } from "./run.ts";

/** At most this many datagrams wait in a socket's queue; more are dropped (and counted). */
const QUEUE_LIMIT = 4096;

export interface RealIoOptions {
  /** A name server to ask instead of the system's (IPv4 address, port 53 unless given). */
  nameServer?: { ipAddr: string; port: number };
}

export function realCheckIo(opts: RealIoOptions = {}): CheckIo {
  const t0 = performance.now();
  return {
    async resolve(name, type) {
      try {
        const ns = opts.nameServer ? { nameServer: opts.nameServer } : undefined;
        if (type === "TXT") {
          return (await Deno.resolveDns(name, "TXT", ns)).map((parts) => parts.join(""));
        }
        return await Deno.resolveDns(name, type, ns);
      } catch (e) {
        // No such name, or no record of that type: an empty answer, not an error.
        if (e instanceof Deno.errors.NotFound) return [];
        throw new Error(`DNS lookup of ${type} ${name} failed: ${(e as Error).message}`);
      }
    },
    openUdp,
    readPublicKeys,
    async mcelieceEncap(pk) {
      return (await loadMcEliece6960119()).encapsulate(pk);
    },
    async sntrupEncap(pk) {
      return (await loadSntrup761()).encapsulate(pk);
    },
    x25519Keypair() {
      const secretKey = x25519.utils.randomSecretKey();
      return { secretKey, publicKey: x25519.getPublicKey(secretKey) };
    },
    random32: () => crypto.getRandomValues(new Uint32Array(1))[0],
    now: () => (performance.now() - t0) / 1000,
    wallClock: () => Date.now() / 1000,
    sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
  };
}

async function openUdp(): Promise<UdpPort> {
  const s = dgram.createSocket("udp4");
  const queue: Datagram[] = [];
  let dropped = 0;
  let wake: (() => void) | null = null;
  s.on("message", (msg, rinfo) => {
    if (queue.length >= QUEUE_LIMIT) return void dropped++;
    queue.push({ data: new Uint8Array(msg), host: rinfo.address, port: rinfo.port });
    wake?.();
  });
  // Send errors (e.g. no route) show up as silence, which the steps diagnose.
  s.on("error", () => {});
  await new Promise<void>((resolve) => s.bind(0, resolve));
  return {
    send(data, host, port) {
      s.send(data, port, host);
    },
    async receive(timeoutMs) {
      if (queue.length === 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            wake = null;
            resolve();
          }, Math.max(0, timeoutMs));
          wake = () => {
            clearTimeout(timer);
            wake = null;
            resolve();
          };
        });
      }
      return queue.splice(0, queue.length);
    },
    close() {
      s.close();
    },
  };
}
