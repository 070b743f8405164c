// Chooses the KEM implementation for this process: libmceliece/libntruprime through FFI
// (ffi/kem_native.ts) when they load, else liboqs's WebAssembly build (wasm/kem.ts), which
// always works. Both give the same Kem interface and byte-identical results
// (tests/kem_test.ts runs the reference vectors under each and crosses their ciphertexts).

import {
  type Decapsulator,
  type Encapsulation,
  type Encapsulator,
  type Kem,
  KemError,
  KemRejectedError,
  type KeyPair,
  loadMcEliece6960119,
  loadSntrup761,
} from "../../wasm/kem.ts";
import { loadNativeKems, type NativeKemFunctions } from "../../ffi/kem_native.ts";

export type KemBackendName = "native" | "wasm";
export type KemChoice = KemBackendName | "auto";

export interface KemBackend {
  name: KemBackendName;
  mceliece: Kem;
  sntrup: Kem;
}

export function parseKemChoice(value: string): KemChoice | null {
  return value === "auto" || value === "native" || value === "wasm" ? value : null;
}

interface Sizes {
  name: string;
  publicKeyBytes: number;
  secretKeyBytes: number;
  ciphertextBytes: number;
  sharedSecretBytes: number;
}

const MCELIECE_SIZES: Sizes = {
  name: "mceliece6960119",
  publicKeyBytes: 1047319,
  secretKeyBytes: 13948,
  ciphertextBytes: 194,
  sharedSecretBytes: 32,
};
const SNTRUP_SIZES: Sizes = {
  name: "sntrup761",
  publicKeyBytes: 1158,
  secretKeyBytes: 1763,
  ciphertextBytes: 1039,
  sharedSecretBytes: 32,
};

function checkBytes(kem: string, what: string, value: unknown, expected: number): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new TypeError(`${kem}: ${what} must be a Uint8Array`);
  if (value.length !== expected) {
    throw new RangeError(`${kem}: ${what} must be ${expected} bytes, got ${value.length}`);
  }
  return value;
}

/** The Kem interface over the C functions. Keys stay in JS memory; ours are wiped on dispose. */
class NativeKem implements Kem {
  readonly name: string;
  readonly publicKeyBytes: number;
  readonly secretKeyBytes: number;
  readonly ciphertextBytes: number;
  readonly sharedSecretBytes: number;

  constructor(s: Sizes, readonly fn: NativeKemFunctions) {
    this.name = s.name;
    this.publicKeyBytes = s.publicKeyBytes;
    this.secretKeyBytes = s.secretKeyBytes;
    this.ciphertextBytes = s.ciphertextBytes;
    this.sharedSecretBytes = s.sharedSecretBytes;
  }

  keypair(): KeyPair {
    const publicKey = new Uint8Array(this.publicKeyBytes);
    const secretKey = new Uint8Array(this.secretKeyBytes);
    if (this.fn.keypair(publicKey, secretKey) !== 0) {
      secretKey.fill(0);
      throw new KemError(`${this.name}: keypair failed`);
    }
    return { publicKey, secretKey };
  }

  /** Public key already checked. */
  encapsulateChecked(publicKey: Uint8Array): Encapsulation {
    const ciphertext = new Uint8Array(this.ciphertextBytes);
    const sharedSecret = new Uint8Array(this.sharedSecretBytes);
    if (this.fn.enc(ciphertext, sharedSecret, publicKey) !== 0) {
      sharedSecret.fill(0);
      throw new KemRejectedError(`${this.name}: public key rejected (padding bits set)`);
    }
    return { ciphertext, sharedSecret };
  }

  /** Ciphertext and key already checked. */
  decapsulateChecked(ciphertext: Uint8Array, secretKey: Uint8Array): Uint8Array {
    const sharedSecret = new Uint8Array(this.sharedSecretBytes);
    if (this.fn.dec(sharedSecret, ciphertext, secretKey) !== 0) {
      sharedSecret.fill(0); // libmceliece leaves a fixed pattern there: never a key
      throw new KemRejectedError(`${this.name}: ciphertext rejected (padding bits set)`);
    }
    return sharedSecret;
  }

  encapsulate(publicKey: Uint8Array): Encapsulation {
    checkBytes(this.name, "public key", publicKey, this.publicKeyBytes);
    return this.encapsulateChecked(publicKey);
  }

  decapsulate(ciphertext: Uint8Array, secretKey: Uint8Array): Uint8Array {
    checkBytes(this.name, "ciphertext", ciphertext, this.ciphertextBytes);
    checkBytes(this.name, "secret key", secretKey, this.secretKeyBytes);
    return this.decapsulateChecked(ciphertext, secretKey);
  }

  encapsulator(publicKey: Uint8Array): Encapsulator {
    checkBytes(this.name, "public key", publicKey, this.publicKeyBytes);
    return new ResidentKey(this, publicKey.slice(), false);
  }

  decapsulator(secretKey: Uint8Array): Decapsulator {
    checkBytes(this.name, "secret key", secretKey, this.secretKeyBytes);
    return new ResidentKey(this, secretKey.slice(), true);
  }
}

/** A private copy of one key; a secret one is zeroed on dispose. */
class ResidentKey implements Encapsulator, Decapsulator {
  #key: Uint8Array | null;

  constructor(readonly kem: NativeKem, key: Uint8Array, private readonly secret: boolean) {
    this.#key = key;
  }

  #live(): Uint8Array {
    if (!this.#key) throw new KemError(`${this.kem.name}: resident key used after dispose()`);
    return this.#key;
  }

  encapsulate(): Encapsulation {
    return this.kem.encapsulateChecked(this.#live());
  }

  decapsulate(ciphertext: Uint8Array): Uint8Array {
    const key = this.#live();
    checkBytes(this.kem.name, "ciphertext", ciphertext, this.kem.ciphertextBytes);
    return this.kem.decapsulateChecked(ciphertext, key);
  }

  dispose(): void {
    if (this.secret) this.#key?.fill(0);
    this.#key = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** The native backend, or null when the libraries cannot be loaded by this process. */
export function nativeKemBackend(): KemBackend | null {
  const kems = loadNativeKems();
  if (!kems) return null;
  return {
    name: "native",
    mceliece: new NativeKem(MCELIECE_SIZES, kems.mceliece6960119),
    sntrup: new NativeKem(SNTRUP_SIZES, kems.sntrup761),
  };
}

export async function wasmKemBackend(): Promise<KemBackend> {
  const [mceliece, sntrup] = await Promise.all([loadMcEliece6960119(), loadSntrup761()]);
  return { name: "wasm", mceliece, sntrup };
}

/** The backend for `choice`; "native" throws when the libraries cannot be loaded. */
export async function loadKemBackend(choice: KemChoice): Promise<KemBackend> {
  if (choice !== "wasm") {
    const native = nativeKemBackend();
    if (native) return native;
    if (choice === "native") {
      throw new KemError(
        "native KEMs were asked for, but libmceliece/libntruprime cannot be loaded " +
          "(scripts/ensure-deps.sh installs them; --allow-ffi must name them)",
      );
    }
  }
  return await wasmKemBackend();
}
