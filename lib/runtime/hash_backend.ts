// Chooses the SHAKE256 behind h() for this process and hands it to the core: Nettle through FFI
// when this process may load it (checking the 937 parts of a key download then takes ~1 ms
// instead of ~35 ms in JS), else the core's JS one. Every daemon calls it once at start.

import { setShake256 } from "../core/crypto.ts";
import { type Nettle, nettle, SHA3_256_CTX_BYTES } from "../../ffi/nettle.ts";

function nettleShake(n: Nettle): (parts: readonly Uint8Array[]) => Uint8Array {
  const ctx = new Uint8Array(SHA3_256_CTX_BYTES);
  return (parts) => {
    n.nettle_sha3_256_init(ctx);
    for (const p of parts) n.nettle_sha3_256_update(ctx, BigInt(p.length), p);
    const out = new Uint8Array(32);
    n.nettle_sha3_256_shake(ctx, 32n, out);
    ctx.fill(0); // Nettle leaves the last input block in the context: the handshake's are secret
    return out;
  };
}

/** Installs Nettle's SHAKE256 when it loads; returns which one h() uses now. */
export function installHashBackend(): "nettle" | "js" {
  const n = nettle();
  setShake256(n ? nettleShake(n) : null);
  return n ? "nettle" : "js";
}
