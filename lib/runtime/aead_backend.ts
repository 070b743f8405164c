// Chooses the AEAD implementation (and with it the handshake's X25519) for this process and hands
// it to the core. libsodium through
// FFI when this process may load it, else the core's JS one. PQCONNECT_AEAD=js|libsodium (when the
// process may read it) overrides the automatic choice. Every daemon and tool calls
// `installAeadBackend` once at start.

import { type AeadBackend, type AeadBackendName, jsAead, setAeadBackend } from "../core/aead.ts";
import { TAG_BYTES } from "../core/constants.ts";
import { type Sodium, sodium } from "../../ffi/sodium.ts";
import { jsX25519, setX25519Backend, type X25519Backend } from "../core/crypto.ts";

export type AeadChoice = AeadBackendName | "auto";

/** n as a BigInt, the latest one kept: the same length again costs no allocation. */
function bigintOf(): (n: number) => bigint {
  let last = 0;
  let lastBig = 0n;
  return (n) => {
    if (n !== last) {
      last = n;
      lastBig = BigInt(n);
    }
    return lastBig;
  };
}

function sodiumAead(s: Sodium): AeadBackend {
  // The combined calls (ciphertext || tag in one buffer): per packet no views to cut. The
  // lengths go as BigInts; a stream of packets has few sizes, so the latest ones are kept.
  const encrypt = s.crypto_aead_chacha20poly1305_ietf_encrypt;
  const decrypt = s.crypto_aead_chacha20poly1305_ietf_decrypt;
  const xorIc = s.crypto_stream_chacha20_xor_ic;
  const counterCell = new DataView(new ArrayBuffer(8));
  const sealLength = bigintOf();
  const openLength = bigintOf();
  const adLength = bigintOf();
  return {
    name: "libsodium",
    encrypt(key, nonce, ad, m, out) {
      encrypt(out, null, m, sealLength(m.length), ad, adLength(ad.length), null, nonce, key);
    },
    decrypt(key, nonce, ad, sealed, out) {
      if (sealed.length < TAG_BYTES) return false;
      // libsodium checks the tag before it writes anything but zeros (on failure) to `out`.
      const clen = openLength(sealed.length);
      return decrypt(out, null, null, sealed, clen, ad, adLength(ad.length), nonce, key) === 0;
    },
    decryptPacket(key, nonce, packet, adLen, out) {
      // aeadOpenPacket checked that `out` starts where the ciphertext does and that the
      // ciphertext and its tag end where `packet` ends: `out` stands for the ciphertext and
      // `packet` for the associated data, pointers both, with the lengths given apart.
      const clen = openLength(out.length + TAG_BYTES);
      return decrypt(out, null, null, out, clen, packet, adLength(adLen), nonce, key) === 0;
    },
    keystream(key, nonce, counter, out) {
      let ic = 0n;
      if (counter) {
        for (let i = 0; i < 8; i++) counterCell.setUint8(i, counter[i]);
        ic = counterCell.getBigUint64(0, true);
      }
      out.fill(0);
      // libsodium carries the 64-bit block counter into its high word and wraps at 2^64, as the
      // reference (which is libsodium) does.
      xorIc(out, out, BigInt(out.length), nonce, ic, key);
    },
  };
}

function sodiumX25519(s: Sodium): X25519Backend {
  const mult = s.crypto_scalarmult_curve25519;
  const base = s.crypto_scalarmult_curve25519_base;
  return {
    name: "libsodium",
    publicKey(sk) {
      const pk = new Uint8Array(32);
      base(pk, sk);
      return pk;
    },
    shared(sk, pk) {
      const q = new Uint8Array(32);
      return mult(q, sk, pk) === 0 ? q : null;
    },
  };
}

function envChoice(): AeadChoice {
  try {
    const granted = Deno.permissions.querySync({ name: "env", variable: "PQCONNECT_AEAD" });
    if (granted.state !== "granted") return "auto";
    const v = Deno.env.get("PQCONNECT_AEAD");
    return v === "js" || v === "libsodium" ? v : "auto";
  } catch {
    return "auto";
  }
}

/** The backend for `choice` ("auto": libsodium if loadable, else JS); throws when libsodium was
 * asked for and cannot be loaded. */
export function aeadBackendFor(choice: AeadChoice): AeadBackend {
  if (choice === "js") return jsAead;
  const s = sodium();
  if (s) return sodiumAead(s);
  if (choice === "libsodium") throw new Error("libsodium was asked for, but it cannot be loaded");
  return jsAead;
}

/** X25519 from the same library as the AEAD backend: libsodium's with it, else noble's. */
export function x25519BackendFor(aead: AeadBackendName): X25519Backend {
  const s = aead === "libsodium" ? sodium() : null;
  return s ? sodiumX25519(s) : jsX25519;
}

/**
 * Installs the backend for `choice` (default: PQCONNECT_AEAD, else automatic) and names it. The
 * handshake's X25519 follows it: libsodium's with the libsodium AEAD.
 */
export function installAeadBackend(choice: AeadChoice = envChoice()): AeadBackendName {
  const backend = aeadBackendFor(choice);
  setAeadBackend(backend);
  setX25519Backend(x25519BackendFor(backend.name));
  return backend.name;
}
