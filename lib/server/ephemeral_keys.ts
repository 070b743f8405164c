// Making the server's ephemeral keys ahead of their slots: a fresh sntrup761 key pair (from
// the crypto worker) and a fresh X25519 key pair for every slot that is due. Randomness comes in.

import type { EphemeralKeyStore } from "../core/ephemeral.ts";
import { x25519PublicKey } from "../core/crypto.ts";

/** The KEM work this needs (lib/runtime/crypto_pool.ts). */
export interface EphemeralKem {
  sntrupKeypair(): Promise<{ publicKey: Uint8Array; secretKey: Uint8Array }>;
}

/** Fills every slot due at `wall` (seconds); returns the slots made. */
export async function makeEphemeralKeys(
  store: EphemeralKeyStore,
  kem: EphemeralKem,
  wall: number,
  random: (bytes: number) => Uint8Array,
): Promise<number[]> {
  const made: number[] = [];
  for (const slot of store.due(wall)) {
    const kp = await kem.sntrupKeypair();
    const x25519Sk = random(32);
    store.add({
      slot,
      sntrupPk: kp.publicKey,
      sntrupSk: kp.secretKey,
      x25519Pk: x25519PublicKey(x25519Sk),
      x25519Sk,
    });
    made.push(slot);
  }
  return made;
}
