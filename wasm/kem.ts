/**
 * The two KEMs of pq1 (Classic McEliece mceliece6960119 and Streamlined NTRU Prime sntrup761)
 * over liboqs-js's WebAssembly builds.
 *
 * This talks to the Emscripten module directly instead of using liboqs-js's wrapper classes so
 * that a 1 MB McEliece public key or a long-term secret key can stay resident in WASM memory
 * across calls, and so that every WASM buffer that held secret material is zeroed before it is
 * freed. The Uint8Arrays handed back to callers are copies; erasing them is the caller's job.
 *
 * Permissions: none. The Emscripten factories embed their WASM binary, and Deno lets a program
 * import files of an npm package it depends on without --allow-read. The package must be
 * resolvable (deno.json maps `@oqs/liboqs-js`, nodeModulesDir "auto").
 */

/** The subset of the Emscripten module (liboqs-js `dist/*.deno.js`) this adapter uses. */
interface OqsModule {
  /** Replaced whenever linear memory grows: read it afresh after any call into WASM. */
  HEAPU8: Uint8Array;
  _OQS_init(): void;
  _OQS_KEM_new(namePtr: number): number;
  _OQS_KEM_free(kemPtr: number): void;
  _OQS_KEM_keypair(kemPtr: number, pkPtr: number, skPtr: number): number;
  _OQS_KEM_encaps(kemPtr: number, ctPtr: number, ssPtr: number, pkPtr: number): number;
  _OQS_KEM_decaps(kemPtr: number, ssPtr: number, ctPtr: number, skPtr: number): number;
  _malloc(size: number): number;
  _free(ptr: number): void;
}

type OqsFactory = (moduleArg?: Record<string, unknown>) => Promise<OqsModule>;

export interface KeyPair {
  publicKey: Uint8Array;
  secretKey: Uint8Array;
}

export interface Encapsulation {
  ciphertext: Uint8Array;
  sharedSecret: Uint8Array;
}

/** A public key kept in WASM memory for repeated encapsulations to the same recipient. */
export interface Encapsulator extends Disposable {
  readonly kem: Kem;
  encapsulate(): Encapsulation;
  /** Frees the WASM copy of the public key. Further use throws. Idempotent. */
  dispose(): void;
}

/** A secret key kept in WASM memory for repeated decapsulations. */
export interface Decapsulator extends Disposable {
  readonly kem: Kem;
  decapsulate(ciphertext: Uint8Array): Uint8Array;
  /** Zeroes and frees the WASM copy of the secret key. Further use throws. Idempotent. */
  dispose(): void;
}

export interface Kem {
  /** Name as the pq1 spec writes it: "mceliece6960119" or "sntrup761". */
  readonly name: string;
  readonly publicKeyBytes: number;
  readonly secretKeyBytes: number;
  readonly ciphertextBytes: number;
  readonly sharedSecretBytes: number;
  keypair(): KeyPair;
  encapsulate(publicKey: Uint8Array): Encapsulation;
  /**
   * Both KEMs use implicit rejection: a corrupted ciphertext yields a pseudo-random secret that
   * matches nothing the sender has, not an error. The exception is an mceliece6960119
   * ciphertext with padding bits set, which throws KemRejectedError.
   */
  decapsulate(ciphertext: Uint8Array, secretKey: Uint8Array): Uint8Array;
  encapsulator(publicKey: Uint8Array): Encapsulator;
  decapsulator(secretKey: Uint8Array): Decapsulator;
}

/** Raised when liboqs reports failure or the loaded module is not what we expect. */
export class KemError extends Error {
  override name = "KemError";
}

/**
 * A well-sized input that the KEM refuses outright. Round-4 mceliece6960119 does this for a
 * ciphertext or public key with any of its unused padding bits set (liboqs then also fills the
 * output with a fixed all-ones pattern, which must never be used as a key). A server should
 * drop the handshake, exactly as for a ciphertext that fails to open.
 */
export class KemRejectedError extends KemError {
  override name = "KemRejectedError";
}

interface Params {
  name: string;
  oqsName: string;
  distFile: string;
  publicKeyBytes: number;
  secretKeyBytes: number;
  ciphertextBytes: number;
  sharedSecretBytes: number;
}

const MCELIECE: Params = {
  name: "mceliece6960119",
  oqsName: "Classic-McEliece-6960119",
  distFile: "classic-mceliece-6960119.deno.js",
  publicKeyBytes: 1047319,
  secretKeyBytes: 13948,
  ciphertextBytes: 194,
  sharedSecretBytes: 32,
};

const SNTRUP: Params = {
  name: "sntrup761",
  oqsName: "sntrup761",
  distFile: "sntrup761.deno.js",
  publicKeyBytes: 1158,
  secretKeyBytes: 1763,
  ciphertextBytes: 1039,
  sharedSecretBytes: 32,
};

// Offsets of the size_t length fields in liboqs's OQS_KEM struct on wasm32: two char*
// (method_name, alg_version), two one-byte fields, padding, then the four lengths.
const OQS_KEM_LENGTHS_OFFSET = 12;

function checkBytes(kem: string, what: string, value: unknown, expected: number): Uint8Array {
  if (!(value instanceof Uint8Array)) {
    throw new TypeError(`${kem}: ${what} must be a Uint8Array`);
  }
  if (value.length !== expected) {
    throw new RangeError(`${kem}: ${what} must be ${expected} bytes, got ${value.length}`);
  }
  return value;
}

/** Zeroes and frees WASM buffers when a resident-key object is dropped without dispose(). */
const leakGuard = new FinalizationRegistry<() => void>((release) => release());

class WasmKem implements Kem {
  readonly name: string;
  readonly publicKeyBytes: number;
  readonly secretKeyBytes: number;
  readonly ciphertextBytes: number;
  readonly sharedSecretBytes: number;
  readonly #m: OqsModule;
  readonly #kem: number;

  constructor(p: Params, m: OqsModule, kemPtr: number) {
    this.name = p.name;
    this.publicKeyBytes = p.publicKeyBytes;
    this.secretKeyBytes = p.secretKeyBytes;
    this.ciphertextBytes = p.ciphertextBytes;
    this.sharedSecretBytes = p.sharedSecretBytes;
    this.#m = m;
    this.#kem = kemPtr;
  }

  /** malloc that fails loudly: a 0 return means the 256 MB WASM heap is exhausted. */
  alloc(size: number): number {
    const ptr = this.#m._malloc(size);
    if (ptr === 0) throw new KemError(`${this.name}: WASM malloc(${size}) failed`);
    return ptr;
  }

  /** Zero-then-free for buffers that held secrets (keys, shared secrets). */
  wipeFree(ptr: number, size: number): void {
    if (ptr === 0) return;
    this.#m.HEAPU8.fill(0, ptr, ptr + size);
    this.#m._free(ptr);
  }

  free(ptr: number): void {
    if (ptr !== 0) this.#m._free(ptr);
  }

  put(ptr: number, bytes: Uint8Array): void {
    this.#m.HEAPU8.set(bytes, ptr);
  }

  take(ptr: number, size: number): Uint8Array {
    return this.#m.HEAPU8.slice(ptr, ptr + size);
  }

  wipe(ptr: number, size: number): void {
    this.#m.HEAPU8.fill(0, ptr, ptr + size);
  }

  status(op: string, rc: number): void {
    if (rc !== 0) throw new KemError(`${this.name}: OQS_KEM_${op} failed (status ${rc})`);
  }

  // For these two KEMs liboqs's encaps/decaps fail only on malformed input (McEliece padding),
  // so a failure there is the input's fault, not the library's.
  rawEncaps(ctPtr: number, ssPtr: number, pkPtr: number): void {
    if (this.#m._OQS_KEM_encaps(this.#kem, ctPtr, ssPtr, pkPtr) !== 0) {
      throw new KemRejectedError(`${this.name}: public key rejected (padding bits set)`);
    }
  }

  rawDecaps(ssPtr: number, ctPtr: number, skPtr: number): void {
    if (this.#m._OQS_KEM_decaps(this.#kem, ssPtr, ctPtr, skPtr) !== 0) {
      throw new KemRejectedError(`${this.name}: ciphertext rejected (padding bits set)`);
    }
  }

  keypair(): KeyPair {
    let pk = 0, sk = 0;
    try {
      pk = this.alloc(this.publicKeyBytes);
      sk = this.alloc(this.secretKeyBytes);
      this.status("keypair", this.#m._OQS_KEM_keypair(this.#kem, pk, sk));
      return {
        publicKey: this.take(pk, this.publicKeyBytes),
        secretKey: this.take(sk, this.secretKeyBytes),
      };
    } finally {
      this.free(pk);
      this.wipeFree(sk, this.secretKeyBytes);
    }
  }

  encapsulate(publicKey: Uint8Array): Encapsulation {
    checkBytes(this.name, "public key", publicKey, this.publicKeyBytes);
    using enc = this.encapsulator(publicKey);
    return enc.encapsulate();
  }

  decapsulate(ciphertext: Uint8Array, secretKey: Uint8Array): Uint8Array {
    checkBytes(this.name, "ciphertext", ciphertext, this.ciphertextBytes);
    checkBytes(this.name, "secret key", secretKey, this.secretKeyBytes);
    using dec = this.decapsulator(secretKey);
    return dec.decapsulate(ciphertext);
  }

  encapsulator(publicKey: Uint8Array): Encapsulator {
    checkBytes(this.name, "public key", publicKey, this.publicKeyBytes);
    return new ResidentEncapsulator(this, publicKey);
  }

  decapsulator(secretKey: Uint8Array): Decapsulator {
    checkBytes(this.name, "secret key", secretKey, this.secretKeyBytes);
    return new ResidentDecapsulator(this, secretKey);
  }
}

/**
 * Owns one WASM block laid out as [key | ciphertext | shared secret] so a resident key needs a
 * single malloc/free and the per-call buffers are reused.
 */
class ResidentBlock {
  readonly kem: WasmKem;
  readonly keyPtr: number;
  readonly ctPtr: number;
  readonly ssPtr: number;
  readonly #size: number;
  readonly #secretKey: boolean;
  #live = true;

  constructor(kem: WasmKem, keyBytes: number, secretKey: boolean, owner: object) {
    this.kem = kem;
    this.#size = keyBytes + kem.ciphertextBytes + kem.sharedSecretBytes;
    this.#secretKey = secretKey;
    this.keyPtr = kem.alloc(this.#size);
    this.ctPtr = this.keyPtr + keyBytes;
    this.ssPtr = this.ctPtr + kem.ciphertextBytes;
    leakGuard.register(owner, () => this.release(), this);
  }

  check(): void {
    if (!this.#live) throw new KemError(`${this.kem.name}: resident key used after dispose()`);
  }

  release(): void {
    if (!this.#live) return;
    this.#live = false;
    leakGuard.unregister(this);
    if (this.#secretKey) {
      this.kem.wipeFree(this.keyPtr, this.#size);
    } else {
      // Only the shared-secret slot is sensitive, and it is wiped after every call already;
      // wiping it again is cheap insurance against an exception between call and wipe.
      this.kem.wipe(this.ssPtr, this.kem.sharedSecretBytes);
      this.kem.free(this.keyPtr);
    }
  }
}

/** A key kept in WebAssembly memory: its block, released (and wiped) once by dispose. */
abstract class Resident {
  protected readonly b: ResidentBlock;

  constructor(kem: WasmKem, key: Uint8Array, keyBytes: number, secret: boolean) {
    this.b = new ResidentBlock(kem, keyBytes, secret, this);
    kem.put(this.b.keyPtr, key);
  }

  get kem(): Kem {
    return this.b.kem;
  }

  dispose(): void {
    this.b.release();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

class ResidentEncapsulator extends Resident implements Encapsulator {
  constructor(kem: WasmKem, publicKey: Uint8Array) {
    super(kem, publicKey, kem.publicKeyBytes, false);
  }

  encapsulate(): Encapsulation {
    const b = this.b;
    b.check();
    const k = b.kem;
    try {
      k.rawEncaps(b.ctPtr, b.ssPtr, b.keyPtr);
      return {
        ciphertext: k.take(b.ctPtr, k.ciphertextBytes),
        sharedSecret: k.take(b.ssPtr, k.sharedSecretBytes),
      };
    } finally {
      k.wipe(b.ssPtr, k.sharedSecretBytes);
    }
  }
}

class ResidentDecapsulator extends Resident implements Decapsulator {
  constructor(kem: WasmKem, secretKey: Uint8Array) {
    super(kem, secretKey, kem.secretKeyBytes, true);
  }

  decapsulate(ciphertext: Uint8Array): Uint8Array {
    const b = this.b;
    b.check();
    const k = b.kem;
    checkBytes(k.name, "ciphertext", ciphertext, k.ciphertextBytes);
    try {
      k.put(b.ctPtr, ciphertext);
      k.rawDecaps(b.ssPtr, b.ctPtr, b.keyPtr);
      return k.take(b.ssPtr, k.sharedSecretBytes);
    } finally {
      k.wipe(b.ssPtr, k.sharedSecretBytes);
    }
  }
}

async function instantiate(p: Params): Promise<Kem> {
  // The dist/ files are not in the package's "exports", so they cannot be imported by a bare
  // specifier; locate them next to the package entry point instead.
  const url = new URL(`../dist/${p.distFile}`, import.meta.resolve("@oqs/liboqs-js"));
  const factory = (await import(url.href)).default as OqsFactory;
  // Emscripten prints aborts to stdout/stderr by default; keep them out of our logs.
  const m = await factory({ print: () => {}, printErr: () => {} });
  m._OQS_init();

  const name = new TextEncoder().encode(p.oqsName + "\0");
  const namePtr = m._malloc(name.length);
  if (namePtr === 0) throw new KemError(`${p.name}: WASM malloc failed`);
  m.HEAPU8.set(name, namePtr);
  const kemPtr = m._OQS_KEM_new(namePtr);
  m._free(namePtr);
  if (kemPtr === 0) throw new KemError(`${p.name}: liboqs does not provide ${p.oqsName}`);

  // Cross-check the sizes liboqs reports against the pq1 sizes, so a package update that
  // changed parameter sets (e.g. round-3 vs round-4 McEliece) fails at load, not on the wire.
  const heap = m.HEAPU8;
  const dv = new DataView(heap.buffer, heap.byteOffset, heap.byteLength);
  const got = [0, 1, 2, 3].map((i) => dv.getUint32(kemPtr + OQS_KEM_LENGTHS_OFFSET + 4 * i, true));
  const want = [p.publicKeyBytes, p.secretKeyBytes, p.ciphertextBytes, p.sharedSecretBytes];
  if (got.some((v, i) => v !== want[i])) {
    m._OQS_KEM_free(kemPtr);
    throw new KemError(
      `${p.name}: liboqs reports sizes pk/sk/ct/ss ${got.join("/")}, expected ${want.join("/")}`,
    );
  }
  return new WasmKem(p, m, kemPtr);
}

function memoize(p: Params): () => Promise<Kem> {
  let pending: Promise<Kem> | undefined;
  return () => {
    if (!pending) {
      pending = instantiate(p);
      // A failed load is not cached, so a transient failure can be retried.
      pending.catch(() => {
        pending = undefined;
      });
    }
    return pending;
  };
}

/** Classic McEliece mceliece6960119 (round 4): pk 1047319, sk 13948, ct 194, ss 32. */
export const loadMcEliece6960119: () => Promise<Kem> = memoize(MCELIECE);

/** Streamlined NTRU Prime sntrup761: pk 1158, sk 1763, ct 1039, ss 32. */
export const loadSntrup761: () => Promise<Kem> = memoize(SNTRUP);
