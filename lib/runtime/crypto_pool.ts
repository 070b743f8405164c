/**
 * Runs KEM work in module workers so that McEliece decapsulation (tens of ms in WASM, a tenth
 * of one natively) and key generation never block the packet path.
 *
 * One or more workers (a server: one per core), one request at a time inside each, replies
 * matched by id. The number of requests outstanding is bounded: past `maxPending` a call rejects
 * at once with CryptoPoolFullError and the refusal is counted, so a flood of handshakes sheds
 * load instead of queueing minutes of work. Inputs are copied into fresh buffers that are transferred (moved) to the worker, so no
 * second copy of a secret lingers in this thread; results come back transferred too.
 *
 * Permissions: --allow-read for wasm/crypto_worker.ts and the modules it imports (wasm/kem.ts,
 * lib/runtime/kem_backend.ts, ffi/kem_native.ts: worker modules are loaded under the parent's
 * read permission); for the native KEMs --allow-ffi naming ffi/kem_native.ts's libraries.
 * `sandboxWorker` additionally drops every permission inside the worker but needs
 * --unstable-worker-options.
 */
import type {
  BatchMessage,
  EncapResult,
  InitMessage,
  KeypairResult,
  RequestBody,
  ResultOf,
  WorkerOp,
  WorkerReply,
  WorkerRequest,
} from "../../wasm/crypto_worker.ts";
import { KemRejectedError } from "../../wasm/kem.ts";
import type { KemBackendName, KemChoice } from "./kem_backend.ts";
import {
  MCELIECE_CT_BYTES,
  MCELIECE_PK_BYTES,
  MCELIECE_SK_BYTES,
  SNTRUP_CT_BYTES,
  SNTRUP_PK_BYTES,
  SNTRUP_SK_BYTES,
} from "../core/constants.ts";

export interface CryptoPoolOptions {
  /** The server's long-term McEliece secret key; copied, the caller's array is left as is. */
  mcelieceSecretKey?: Uint8Array;
  /** A server's static X25519 secret key, for whole handshakes in the worker (respond()). */
  x25519SecretKey?: Uint8Array;
  /**
   * Bound on requests submitted but not yet answered (default 128). Size it to the latency
   * you accept: a full queue of McEliece decapsulations is maxPending × ~decap time.
   */
  maxPending?: number;
  /**
   * Workers, each with its own copy of the server key (default 1). A server gives one per core
   * so handshakes use every core while the packet loop stays free.
   */
  workers?: number;
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
  /** Answered only from finishDeferred(), not in the turn its reply arrives in. */
  deferred?: boolean;
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

/**
 * `bytes` spans the whole of its own buffer, so moving that buffer to a worker takes nothing
 * else with it. respondDeferred's caller hands the initiation over (the server device passes its
 * private copy), and a second copy of each of the 1299 bytes cost the packet thread 3 % at 5x
 * the handshake capacity (issue 8).
 */
function ownedWhole(bytes: Uint8Array): bytes is Uint8Array<ArrayBuffer> {
  return bytes.byteOffset === 0 && bytes.buffer instanceof ArrayBuffer &&
    bytes.byteLength === bytes.buffer.byteLength;
}

/** One worker and the requests it has not answered yet. */
class Lane {
  readonly pending = new Map<number, Pending>();
  /** Ids of the pool's own messages (keys, shutdown): never bounded, never counted. */
  readonly control = new Set<number>();
  /** Requests of this turn not yet posted: sent together as one message at its end. */
  outbox: { message: unknown; transfer: ArrayBuffer[] }[] = [];
  constructor(readonly worker: Worker) {}
}

/** Starts one worker and resolves with its backend once its KEMs (and key, if any) are loaded. */
async function startWorker(
  options: CryptoPoolOptions,
  index: number,
): Promise<{ worker: Worker; backend: KemBackendName }> {
  const workerOptions: WorkerOptions & { deno?: { permissions: "none" } } = {
    type: "module",
    name: `pqconnect-crypto-${index}`,
  };
  if (options.sandboxWorker) workerOptions.deno = { permissions: "none" };
  const worker = new Worker(new URL("../../wasm/crypto_worker.ts", import.meta.url), workerOptions);
  const timeoutMs = options.startTimeoutMs ?? 30_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const backend = await new Promise<KemBackendName>((resolve, reject) => {
      timer = setTimeout(
        () => reject(new CryptoPoolError(`crypto worker not ready after ${timeoutMs} ms`)),
        timeoutMs,
      );
      worker.onmessage = (ev: MessageEvent<WorkerReply>) => {
        if (ev.data.op === "ready") resolve(ev.data.backend);
        else if (ev.data.op === "initFailed") {
          reject(new CryptoPoolError(`crypto worker failed to start: ${ev.data.error}`));
        }
      };
      worker.onerror = (ev) => {
        ev.preventDefault();
        reject(new CryptoPoolError(`crypto worker failed to start: ${ev.message}`));
      };
      // Each worker gets its own copy of the key, moved there and wiped by it on shutdown.
      const sk = options.mcelieceSecretKey;
      const key = sk === undefined ? null : movable(sk);
      const x = options.x25519SecretKey === undefined ? null : movable(options.x25519SecretKey);
      const init: InitMessage = {
        op: "init",
        mcelieceSecretKey: key,
        kem: options.kem ?? "auto",
        x25519SecretKey: x,
      };
      worker.postMessage(init, [...(key ? [key.buffer] : []), ...(x ? [x.buffer] : [])]);
    });
    return { worker, backend };
  } catch (e) {
    worker.terminate();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * All methods validate inputs and report every failure as a rejected promise. Work goes to the
 * worker with the fewest requests outstanding; a registered public key stays with one worker.
 */
export class CryptoPool implements AsyncDisposable {
  readonly #lanes: Lane[];
  readonly #maxPending: number;
  readonly #hasServerKey: boolean;
  readonly #backend: KemBackendName;
  #outstanding = 0;
  #nextId = 1;
  #nextPkId = 1;
  #closed: Promise<void> | undefined;
  #dead: Error | undefined;
  #stats = { submitted: 0, completed: 0, failed: 0, rejectedFull: 0 };
  #posted = 0;
  /** Replies to respondDeferred() calls, waiting for finishDeferred(). */
  #inbox: { lane: Lane; reply: Extract<WorkerReply, { op: "reply" }> }[] = [];
  #inboxHead = 0;

  private constructor(
    workers: Worker[],
    backend: KemBackendName,
    maxPending: number,
    hasServerKey: boolean,
  ) {
    this.#lanes = workers.map((w) => new Lane(w));
    this.#backend = backend;
    this.#maxPending = maxPending;
    this.#hasServerKey = hasServerKey;
  }

  /** Spawns the workers and resolves once each has loaded its KEMs (and key, if any). */
  static async start(options: CryptoPoolOptions = {}): Promise<CryptoPool> {
    const maxPending = options.maxPending ?? 128;
    if (!Number.isInteger(maxPending) || maxPending < 1) {
      throw new RangeError(`maxPending must be a positive integer, got ${maxPending}`);
    }
    const count = options.workers ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > 64) {
      throw new RangeError(`workers must be an integer 1..64, got ${count}`);
    }
    const sk = options.mcelieceSecretKey;
    if (sk !== undefined) checkLength("McEliece secret key", sk, MCELIECE_SK_BYTES);

    const started = await Promise.allSettled(
      Array.from({ length: count }, (_, i) => startWorker(options, i)),
    );
    const failed = started.find((r) => r.status === "rejected");
    if (failed) {
      for (const r of started) if (r.status === "fulfilled") r.value.worker.terminate();
      throw (failed as PromiseRejectedResult).reason;
    }
    const ok = started.map((r) =>
      (r as PromiseFulfilledResult<{ worker: Worker; backend: KemBackendName }>).value
    );
    const pool = new CryptoPool(
      ok.map((r) => r.worker),
      ok[0].backend,
      maxPending,
      sk !== undefined,
    );
    for (const lane of pool.#lanes) {
      lane.worker.onmessage = (ev: MessageEvent<WorkerReply>) => pool.#onReply(lane, ev.data);
      lane.worker.onerror = (ev) => {
        ev.preventDefault();
        pool.#die(new CryptoPoolClosedError(`crypto worker crashed: ${ev.message}`));
      };
      lane.worker.onmessageerror = () => {
        pool.#die(new CryptoPoolClosedError("crypto worker sent an unreadable message"));
      };
    }
    return pool;
  }

  /** The KEM implementation the workers run. */
  get backend(): KemBackendName {
    return this.#backend;
  }

  /** How many workers (each with its own copy of the server key). */
  get workers(): number {
    return this.#lanes.length;
  }

  /** Messages posted to the workers so far (a batch of requests is one). */
  get messagesPosted(): number {
    return this.#posted;
  }

  get stats(): CryptoPoolStats {
    return { ...this.#stats, pending: this.#outstanding };
  }

  /** Decapsulates a handshake's c0 with the server key given to start(). */
  async mcelieceDecap(ciphertext: Uint8Array): Promise<Uint8Array> {
    checkLength("McEliece ciphertext", ciphertext, MCELIECE_CT_BYTES);
    if (!this.#hasServerKey) {
      throw new CryptoPoolError("no McEliece secret key was given to CryptoPool.start()");
    }
    const ct = movable(ciphertext);
    return (await this.#call({ op: "mcelieceDecap", ct }, [ct.buffer])).sharedSecret;
  }

  /**
   * Keeps a server's McEliece public key resident in one worker and returns its id for
   * mcelieceEncap(). Register once per server; unregister when the key is no longer wanted.
   */
  async registerMcEliecePublicKey(publicKey: Uint8Array): Promise<number> {
    checkLength("McEliece public key", publicKey, MCELIECE_PK_BYTES);
    const pkId = this.#nextPkId++;
    const pk = movable(publicKey);
    await this.#call({ op: "registerMcEliecePk", pkId, pk }, [pk.buffer], this.#laneOf(pkId));
    return pkId;
  }

  async unregisterMcEliecePublicKey(pkId: number): Promise<void> {
    await this.#call({ op: "unregisterMcEliecePk", pkId }, [], this.#laneOf(pkId));
  }

  /** One (c0, k0) for a registered server key, e.g. to refill a precomputed stock. */
  async mcelieceEncap(pkId: number): Promise<EncapResult> {
    return await this.#call({ op: "mcelieceEncap", pkId }, [], this.#laneOf(pkId));
  }

  /**
   * A whole responder handshake in one worker round trip: McEliece decapsulation, respondOpen
   * over `slots` (live ephemeral slot ids, newest first, given to addEphemeral), the sntrup761
   * decapsulation, respondFinish. Needs both server keys given to start().
   */
  async respond(initiation: Uint8Array, slots: number[]): Promise<ResultOf["respond"]> {
    if (!this.#hasServerKey) {
      throw new CryptoPoolError("no McEliece secret key was given to CryptoPool.start()");
    }
    const data = movable(initiation);
    return await this.#call({ op: "respond", data, slots }, [data.buffer]);
  }

  /**
   * respond() without a promise: `done` is called synchronously from finishDeferred(), which
   * the caller's packet loop runs a bounded number at a time between socket reads. The turn a
   * worker's reply arrives in then only files it: a turn that finished every handshake of a
   * burst of replies left the socket unread long enough for the kernel to drop datagrams.
   * False (and `done` never called) when the pool is full or closed. The pool takes
   * `initiation` over: when it is a whole buffer of its own, that buffer is moved to the worker
   * (the caller's view is then empty), otherwise it is copied.
   */
  respondDeferred(
    initiation: Uint8Array,
    slots: number[],
    done: (result: ResultOf["respond"] | null, error?: Error) => void,
  ): boolean {
    if (!this.#hasServerKey || this.#closed || this.#dead) return false;
    if (this.#outstanding >= this.#maxPending) {
      this.#stats.rejectedFull++;
      return false;
    }
    const data = ownedWhole(initiation) ? initiation : movable(initiation);
    this.#enqueue(this.#idlest(), { op: "respond", data, slots }, [data.buffer], false, {
      resolve: (r) => done(r as ResultOf["respond"]),
      reject: (e) => done(null, e),
      deferred: true,
    });
    return true;
  }

  /** Requests submitted and not answered yet (filed replies included). */
  get outstanding(): number {
    return this.#outstanding;
  }

  /**
   * Some request (a control message included) has been posted and its reply has not arrived
   * yet: a packet loop that is owed one waits where the event loop can take it.
   */
  get awaitingReplies(): boolean {
    let pending = 0;
    for (const lane of this.#lanes) pending += lane.pending.size;
    return pending > this.deferredWaiting;
  }

  /** Replies filed for finishDeferred(). */
  get deferredWaiting(): number {
    return this.#inbox.length - this.#inboxHead;
  }

  /**
   * Answers up to `max` filed replies (their `done` callbacks run here), then posts what those
   * callbacks asked of the workers. Returns how many are still filed.
   */
  finishDeferred(max: number): number {
    const inbox = this.#inbox;
    const end = Math.min(inbox.length, this.#inboxHead + max);
    while (this.#inboxHead < end) {
      const { lane, reply } = inbox[this.#inboxHead];
      inbox[this.#inboxHead++] = undefined!;
      this.#answer(lane, reply);
    }
    if (this.#inboxHead === inbox.length) {
      this.#inbox = [];
      this.#inboxHead = 0;
    }
    for (const lane of this.#lanes) this.#flush(lane);
    return this.deferredWaiting;
  }

  /** Hands one ephemeral slot's secrets to every worker (each gets its own copy). */
  async addEphemeral(slot: number, x25519Sk: Uint8Array, sntrupSk: Uint8Array): Promise<void> {
    checkLength("X25519 secret key", x25519Sk, 32);
    checkLength("sntrup761 secret key", sntrupSk, SNTRUP_SK_BYTES);
    await Promise.all(this.#lanes.map((lane) => {
      const x = movable(x25519Sk);
      const s = movable(sntrupSk);
      return this.#control(lane, { op: "addEphemeral", slot, x25519Sk: x, sntrupSk: s }, [
        x.buffer,
        s.buffer,
      ]);
    }));
  }

  /** Every worker erases the ephemeral secrets of the slots not in `slots`. */
  async keepEphemeral(slots: number[]): Promise<void> {
    await Promise.all(
      this.#lanes.map((lane) =>
        this.#control(lane, { op: "keepEphemeral", slots: [...slots] }, [])
      ),
    );
  }

  async sntrupKeypair(): Promise<KeypairResult> {
    return await this.#call({ op: "sntrupKeypair" }, []);
  }

  /** The worker's copy of `secretKey` is zeroed after use; the caller's is left as is. */
  async sntrupDecap(ciphertext: Uint8Array, secretKey: Uint8Array): Promise<Uint8Array> {
    checkLength("sntrup761 ciphertext", ciphertext, SNTRUP_CT_BYTES);
    checkLength("sntrup761 secret key", secretKey, SNTRUP_SK_BYTES);
    const ct = movable(ciphertext);
    const sk = movable(secretKey);
    const r = await this.#call({ op: "sntrupDecap", ct, sk }, [ct.buffer, sk.buffer]);
    return r.sharedSecret;
  }

  async sntrupEncap(publicKey: Uint8Array): Promise<EncapResult> {
    checkLength("sntrup761 public key", publicKey, SNTRUP_PK_BYTES);
    const pk = movable(publicKey);
    return await this.#call({ op: "sntrupEncap", pk }, [pk.buffer]);
  }

  /**
   * Stops accepting work, lets the workers finish what was already submitted, has each zero its
   * keys, then terminates them. After `timeoutMs` they are terminated regardless and anything
   * unanswered is rejected with CryptoPoolClosedError. Idempotent.
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
      // Messages are handled in order, so each is answered after everything before it.
      const done = Promise.all(
        this.#lanes.map((lane) => this.#send(lane, { op: "shutdown" }, [], true).catch(() => {})),
      );
      const expired = new Promise<void>((resolve) => timer = setTimeout(resolve, timeoutMs));
      await Promise.race([done, expired]);
      clearTimeout(timer);
    }
    this.#die(new CryptoPoolClosedError("crypto pool closed"));
  }

  #die(reason: Error): void {
    this.#dead ??= reason;
    for (const lane of this.#lanes) {
      lane.worker.terminate();
      const pending = [...lane.pending];
      lane.pending.clear();
      const control = new Set(lane.control);
      lane.control.clear();
      for (const [id, p] of pending) {
        if (!control.has(id)) {
          this.#stats.failed++;
          this.#outstanding--;
        }
        p.reject(reason);
      }
    }
  }

  #laneOf(pkId: number): Lane {
    return this.#lanes[pkId % this.#lanes.length];
  }

  /** The worker with the fewest requests outstanding. */
  #idlest(): Lane {
    let best = this.#lanes[0];
    for (const lane of this.#lanes) if (lane.pending.size < best.pending.size) best = lane;
    return best;
  }

  #call<Op extends WorkerOp>(
    req: RequestBody & { op: Op },
    transfer: ArrayBuffer[],
    lane?: Lane,
  ): Promise<ResultOf[Op]> {
    if (this.#closed || this.#dead) {
      return Promise.reject(this.#dead ?? new CryptoPoolClosedError("crypto pool is closing"));
    }
    return this.#send(lane ?? this.#idlest(), req, transfer, false) as Promise<ResultOf[Op]>;
  }

  /** One of the pool's own messages to `lane`: not bounded by maxPending, refused once closed. */
  #control(lane: Lane, req: RequestBody, transfer: ArrayBuffer[]): Promise<unknown> {
    if (this.#closed || this.#dead) {
      return Promise.reject(this.#dead ?? new CryptoPoolClosedError("crypto pool is closing"));
    }
    return this.#send(lane, req, transfer, true);
  }

  #send(
    lane: Lane,
    req: RequestBody,
    transfer: ArrayBuffer[],
    internal: boolean,
  ): Promise<unknown> {
    if (!internal && this.#outstanding >= this.#maxPending) {
      this.#stats.rejectedFull++;
      return Promise.reject(
        new CryptoPoolFullError(`crypto pool full (${this.#maxPending} requests outstanding)`),
      );
    }
    return new Promise((resolve, reject) => {
      this.#enqueue(lane, req, transfer, internal, { resolve, reject });
    });
  }

  #enqueue(
    lane: Lane,
    req: RequestBody,
    transfer: ArrayBuffer[],
    internal: boolean,
    pending: Pending,
  ): void {
    const id = this.#nextId++;
    lane.pending.set(id, pending);
    if (internal) lane.control.add(id);
    else {
      this.#stats.submitted++;
      this.#outstanding++;
    }
    lane.outbox.push({ message: { ...req, id }, transfer });
    if (lane.outbox.length === 1) queueMicrotask(() => this.#flush(lane));
  }

  /**
   * Posts what this turn asked of `lane`: one request as it is, several as one batch (a reply
   * to a batch starts the next handshakes in one turn, so under load each message carries many;
   * each message costs both threads a structured clone and a wakeup).
   */
  #flush(lane: Lane): void {
    const out = lane.outbox;
    lane.outbox = [];
    if (out.length === 0 || this.#dead) return;
    this.#posted++;
    if (out.length === 1) return lane.worker.postMessage(out[0].message, out[0].transfer);
    const batch: BatchMessage = {
      op: "batch",
      requests: out.map((o) => o.message as WorkerRequest),
    };
    lane.worker.postMessage(batch, out.flatMap((o) => o.transfer));
  }

  #onReply(lane: Lane, reply: WorkerReply): void {
    if (reply.op === "replies") {
      for (const r of reply.replies) this.#onReply(lane, r);
      return;
    }
    if (reply.op !== "reply") return;
    const p = lane.pending.get(reply.id);
    if (!p) return;
    if (p.deferred) {
      this.#inbox.push({ lane, reply });
      return;
    }
    this.#answer(lane, reply);
  }

  #answer(lane: Lane, reply: WorkerReply & { op: "reply" }): void {
    const p = lane.pending.get(reply.id);
    if (!p) return; // cut off by #die meanwhile
    lane.pending.delete(reply.id);
    if (lane.control.delete(reply.id)) {
      if (reply.ok) p.resolve(reply.result);
      else p.reject(new CryptoPoolError(reply.error));
      return;
    }
    this.#outstanding--;
    if (reply.ok) {
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
