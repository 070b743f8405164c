// A fresh process runs its first X25519 and its first KEM calls cold: V8 and the WebAssembly
// tiers compile them on first use, which made the first handshake tens of milliseconds slower
// than the next. Each daemon runs them once on throwaway inputs before it serves anything.

import { x25519PublicKey, x25519Shared } from "../core/crypto.ts";
import { MCELIECE_CT_BYTES, SNTRUP_PK_BYTES } from "../core/constants.ts";
import { wipe } from "../core/bytes.ts";
import type { CryptoPool } from "./crypto_pool.ts";

export async function warmUp(pool: CryptoPool, role: "server" | "client"): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const sk = crypto.getRandomValues(new Uint8Array(32));
    const peer = x25519PublicKey(crypto.getRandomValues(new Uint8Array(32)));
    wipe(sk, x25519Shared(sk, peer));
  }
  try {
    if (role === "server") {
      // An all-zero ciphertext decapsulates (to an implicit-rejection secret) like any other.
      wipe(await pool.mcelieceDecap(new Uint8Array(MCELIECE_CT_BYTES)));
    } else {
      wipe((await pool.sntrupEncap(new Uint8Array(SNTRUP_PK_BYTES))).sharedSecret);
    }
  } catch { /* only a warm-up: the real calls report their own failures */ }
}
