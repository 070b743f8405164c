/**
 * Runs KEM work in a dedicated module worker so that McEliece decapsulation (tens of ms in
 * WASM) and key generation never block the packet path.
 *
 * One worker, one request at a time inside it, replies matched by id. The number of requests
 * outstanding is bounded: past `maxPending` a call rejects at once with CryptoPoolFullError
 * and the refusal is counted, so a flood of handshakes sheds load instead of queueing minutes of
 * work. Inputs are copied into fresh buffers that are transferred (moved) to the worker, so no
 * second copy of a secret lingers in this thread; results come back transferred too.
 *
 * Permissions: --allow-read for wasm/crypto_worker.ts and the modules it imports (wasm/kem.ts,
 * lib/runtime/kem_backend.ts, ffi/kem_native.ts: worker modules are loaded under the parent's
 * read permission); for the native KEMs --allow-ffi naming ffi/kem_native.ts's libraries. `sandboxWorker` additionally drops every
 * permission inside the worker but needs --unstable-worker-options.
 */
import type {
  EncapResult,
  InitMessage,
  KeypairResult,
  RequestBody,
  ResultOf,
  WorkerOp,
  WorkerReply,
} from "../../wasm/crypto_worker.ts";
import { KemRejectedError } from "../../wasm/kem.ts";
import type { KemBackendName, KemChoice } from "./kem_backend.ts";

const MCELIECE_PK = 1047319;
const MCELIECE_SK = 13948;
const MCELIECE_CT = 194;
const SNTRUP_PK = 1158;
const SNTRUP_SK = 1763;
const SNTRUP_CT = 1039;

export interface CryptoPoolOptions {
  /** The server's long-term McEliece secret key; copied, the caller's array is left as is. */
  mcelieceSecretKey?: Uint8Array;
  /**
   * Bound on requests submitted but not yet answered (default 128). Size it to the latency
   * you accept: a full queue of McEliece decapsulations is maxPending × ~decap time.
   */
  maxPending?: number;
  /** Which KEMs the worker runs (default "auto": native when the libraries load, else WASM). */
  kem?: KemChoice;
  /** Drop all permissions inside the worker (Deno: needs --unstable-worker-options). */
  sandboxWorker?: boolean;
  /** How long start() waits for the worker to load WASM and the key (default 30 s). */
  startTimeoutMs?: number;
}

export interface CryptoPoolStats {
  /** Requests accepted and sent to the worker. */
  submitted: number;
  /** Requests answered successfully. */
  completed: number;
  /** Requests answered with an error (including KEM rejections) or cut off by close(). */
  failed: number;
  /** Requests refused because maxPending were outstanding. */
  rejectedFull: number;
  /** Requests outstanding now. */
  pending: number;
}

export class CryptoPoolError extends Error {
  override name = "CryptoPoolError";
}

/** The bounded queue is full; the request was not submitted. */
export class CryptoPoolFullError extends CryptoPoolError {
  override name = "CryptoPoolFullError";
}

/** The pool is closing or closed, or its worker died. */
export class CryptoPoolClosedError extends CryptoPoolError {
  override name = "CryptoPoolClosedError";
}

interface Pending {
  resolve(result: unknown): void;
  reject(error: Error): void;
}

function checkLength(what: string, value: Uint8Array, expected: number): void {
  if (!(value instanceof Uint8Array)) throw new TypeError(`${what} must be a Uint8Array`);
  if (value.length !== expected) {
    throw new RangeError(`${what} must be ${expected} bytes, got ${value.length}`);
  }
}

/** A private copy whose buffer can be moved to the worker without detaching the caller's. */
function movable(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes.slice();
}

/** All methods validate inputs and report every failure as a rejected promise. */
export class CryptoPool implements AsyncDisposable {
  readonly #worker: Worker;
  readonly #maxPending: number;
  readonly #hasServerKey: boolean;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #nextPkId = 1;
  #shutdownId = 0;
  #closed: Promise<void> | undefined;
  #dead: Error | undefined;
  #stats = { submitted: 0, completed: 0, failed: 0, rejectedFull: 0 };
  #backend: KemBackendName = "wasm";

  private constructor(worker: Worker, maxPending: number, hasServerKey: boolean) {
    this.#worker = worker;
    this.#maxPending = maxPending;
    this.#hasServerKey = hasServerKey;
  }

  /** Spawns the worker and resolves once its WASM modules (and key, if any) are loaded. */
  static async start(options: CryptoPoolOptions = {}): Promise<CryptoPool> {
    const maxPending = options.maxPending ?? 128;
    if (!Number.isInteger(maxPending) || maxPending < 1) {
      throw new RangeError(`maxPending must be a positive integer, got ${maxPending}`);
    }
    const sk = options.mcelieceSecretKey;
    if (sk !== undefined) checkLength("McEliece secret key", sk, MCELIECE_SK);

    const workerOptions: WorkerOptions & { deno?: { permissions: "none" } } = {
      type: "module",
      name: "pqconnect-crypto",
    };
    if (options.sandboxWorker) workerOptions.deno = { permissions: "none" };
    const worker = new Worker(
      new URL("../../wasm/crypto_worker.ts", import.meta.url),
      workerOptions,
    );
    const pool = new CryptoPool(worker, maxPending, sk !== undefined);

    const timeoutMs = options.startTimeoutMs ?? 30_000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(
          () => reject(new CryptoPoolError(`crypto worker not ready after ${timeoutMs} ms`)),
          timeoutMs,
        );
        worker.onmessage = (ev: MessageEvent<WorkerReply>) => {
          if (ev.data.op === "ready") {
            pool.#backend = ev.data.backend;
            resolve();
          } else if (ev.data.op === "initFailed") {
            reject(new CryptoPoolError(`crypto worker failed to start: ${ev.data.error}`));
          }
        };
        worker.onerror = (ev) => {
          ev.preventDefault();
          reject(new CryptoPoolError(`crypto worker failed to start: ${ev.message}`));
        };
        const key = sk === undefined ? null : movable(sk);
        const init: InitMessage = {
          op: "init",
          mcelieceSecretKey: key,
          kem: options.kem ?? "auto",
        };
        worker.postMessage(init, key ? [key.buffer] : []);
      });
    } catch (e) {
      worker.terminate();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    worker.onmessage = (ev: MessageEvent<WorkerReply>) => pool.#onReply(ev.data);
    worker.onerror = (ev) => {
      ev.preventDefault();
      pool.#die(new CryptoPoolClosedError(`crypto worker crashed: ${ev.message}`));
    };
    worker.onmessageerror = () => {
      pool.#die(new CryptoPoolClosedError("crypto worker sent an unreadable message"));
    };
    return pool;
  }

  /** The KEM implementation the worker runs. */
  get backend(): KemBackendName {
    return this.#backend;
  }

  get stats(): CryptoPoolStats {
    return { ...this.#stats, pending: this.#pending.size };
  }

  /** Decapsulates a handshake's c0 with the server key given to start(). */
  async mcelieceDecap(ciphertext: Uint8Array): Promise<Uint8Array> {
    checkLength("McEliece ciphertext", ciphertext, MCELIECE_CT);
    if (!this.#hasServerKey) {
      throw new CryptoPoolError("no McEliece secret key was given to CryptoPool.start()");
    }
    const ct = movable(ciphertext);
    return (await this.#call({ op: "mcelieceDecap", ct }, [ct.buffer])).sharedSecret;
  }

  /**
   * Keeps a server's McEliece public key resident in the worker and returns its id for
   * mcelieceEncap(). Register once per server; unregister when the key is no longer wanted.
   */
  async registerMcEliecePublicKey(publicKey: Uint8Array): Promise<number> {
    checkLength("McEliece public key", publicKey, MCELIECE_PK);
    const pkId = this.#nextPkId++;
    const pk = movable(publicKey);
    await this.#call({ op: "registerMcEliecePk", pkId, pk }, [pk.buffer]);
    return pkId;
  }

  async unregisterMcEliecePublicKey(pkId: number): Promise<void> {
    await this.#call({ op: "unregisterMcEliecePk", pkId }, []);
  }

  /** One (c0, k0) for a registered server key, e.g. to refill a precomputed stock. */
  async mcelieceEncap(pkId: number): Promise<EncapResult> {
    return await this.#call({ op: "mcelieceEncap", pkId }, []);
  }

  async sntrupKeypair(): Promise<KeypairResult> {
    return await this.#call({ op: "sntrupKeypair" }, []);
  }

  /** The worker's copy of `secretKey` is zeroed after use; the caller's is left as is. */
  async sntrupDecap(ciphertext: Uint8Array, secretKey: Uint8Array): Promise<Uint8Array> {
    checkLength("sntrup761 ciphertext", ciphertext, SNTRUP_CT);
    checkLength("sntrup761 secret key", secretKey, SNTRUP_SK);
    const ct = movable(ciphertext);
    const sk = movable(secretKey);
    const r = await this.#call({ op: "sntrupDecap", ct, sk }, [ct.buffer, sk.buffer]);
    return r.sharedSecret;
  }

  async sntrupEncap(publicKey: Uint8Array): Promise<EncapResult> {
    checkLength("sntrup761 public key", publicKey, SNTRUP_PK);
    const pk = movable(publicKey);
    return await this.#call({ op: "sntrupEncap", pk }, [pk.buffer]);
  }

  /**
   * Stops accepting work, lets the worker finish what was already submitted, has it zero its
   * keys, then terminates it. After `timeoutMs` the worker is terminated regardless and
   * anything unanswered is rejected with CryptoPoolClosedError. Idempotent.
   */
  close(timeoutMs = 10_000): Promise<void> {
    this.#closed ??= this.#shutdown(timeoutMs);
    return this.#closed;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #shutdown(timeoutMs: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (!this.#dead) {
      // Messages are handled in order, so this is answered after everything before it.
      const done = this.#send({ op: "shutdown" }, [], true).catch(() => {});
      const expired = new Promise<void>((resolve) => timer = setTimeout(resolve, timeoutMs));
      await Promise.race([done, expired]);
      clearTimeout(timer);
    }
    this.#die(new CryptoPoolClosedError("crypto pool closed"));
  }

  #die(reason: Error): void {
    this.#dead ??= reason;
    this.#worker.terminate();
    const pending = [...this.#pending];
    this.#pending.clear();
    for (const [id, p] of pending) {
      if (id !== this.#shutdownId) this.#stats.failed++;
      p.reject(reason);
    }
  }

  #call<Op extends WorkerOp>(
    req: RequestBody & { op: Op },
    transfer: ArrayBuffer[],
  ): Promise<ResultOf[Op]> {
    if (this.#closed || this.#dead) {
      return Promise.reject(this.#dead ?? new CryptoPoolClosedError("crypto pool is closing"));
    }
    return this.#send(req, transfer, false) as Promise<ResultOf[Op]>;
  }

  #send(req: RequestBody, transfer: ArrayBuffer[], internal: boolean): Promise<unknown> {
    if (!internal && this.#pending.size >= this.#maxPending) {
      this.#stats.rejectedFull++;
      return Promise.reject(
        new CryptoPoolFullError(`crypto pool full (${this.#maxPending} requests outstanding)`),
      );
    }
    const id = this.#nextId++;
    const message = { ...req, id };
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      if (internal) this.#shutdownId = id;
      else this.#stats.submitted++;
      this.#worker.postMessage(message, transfer);
    });
  }

  #onReply(reply: WorkerReply): void {
    if (reply.op !== "reply") return;
    const p = this.#pending.get(reply.id);
    if (!p) return;
    this.#pending.delete(reply.id);
    if (reply.id === this.#shutdownId) {
      p.resolve(undefined);
    } else if (reply.ok) {
      this.#stats.completed++;
      p.resolve(reply.result);
    } else {
      this.#stats.failed++;
      p.reject(
        reply.rejected ? new KemRejectedError(reply.error) : new CryptoPoolError(reply.error),
      );
    }
  }
}
