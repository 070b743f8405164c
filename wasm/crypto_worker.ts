/**
 * Module worker that runs KEM operations off the packet path (spawned by
 * lib/runtime/crypto_pool.ts), with the native or the WASM KEMs as the init message asks.
 *
 * Holds the server's McEliece secret key resident in WASM memory (given once in the init
 * message, zeroed on shutdown) and any McEliece public keys registered for precomputing
 * ciphertexts. Requests are handled one at a time in arrival order; every reply carries the
 * request id. Result buffers are transferred, not copied, and secret inputs that arrived in
 * this worker are zeroed once used.
 *
 * Loading it needs --allow-read for this file and the modules it imports (Deno checks worker
 * modules' local imports against the parent's permissions); the liboqs package itself needs
 * nothing. The native KEMs need --allow-ffi for their libraries (ffi/kem_native.ts).
 */
import { type Decapsulator, type Encapsulator, type Kem, KemRejectedError } from "./kem.ts";
import { type KemBackendName, type KemChoice, loadKemBackend } from "../lib/runtime/kem_backend.ts";
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";
import { installHashBackend } from "../lib/runtime/hash_backend.ts";
import { parseInitiation } from "../lib/core/handshake.ts";
import { preferSlot, type ResponderOutcome, respondInitiation } from "../lib/core/responder.ts";
import { wipe } from "../lib/core/bytes.ts";

/** First message from the pool. The key's buffer is transferred here and wiped after loading. */
export interface InitMessage {
  op: "init";
  mcelieceSecretKey: Uint8Array | null;
  /** Which KEM implementation to load (lib/runtime/kem_backend.ts). */
  kem: KemChoice;
  /** A server's static X25519 secret key, for whole handshakes ("respond"); wiped on shutdown. */
  x25519SecretKey?: Uint8Array | null;
}

export type WorkerRequest =
  | { id: number; op: "mcelieceDecap"; ct: Uint8Array }
  | { id: number; op: "mcelieceEncap"; pkId: number }
  | { id: number; op: "registerMcEliecePk"; pkId: number; pk: Uint8Array }
  | { id: number; op: "unregisterMcEliecePk"; pkId: number }
  | { id: number; op: "sntrupKeypair" }
  | { id: number; op: "sntrupDecap"; ct: Uint8Array; sk: Uint8Array }
  | { id: number; op: "sntrupEncap"; pk: Uint8Array }
  | { id: number; op: "respond"; data: Uint8Array; slots: number[] }
  | { id: number; op: "addEphemeral"; slot: number; x25519Sk: Uint8Array; sntrupSk: Uint8Array }
  | { id: number; op: "keepEphemeral"; slots: number[] }
  | { id: number; op: "shutdown" };

export type WorkerOp = WorkerRequest["op"];

/** Several requests in one message (the pool batches what it sends in one turn). */
export interface BatchMessage {
  op: "batch";
  requests: WorkerRequest[];
}

/** A request before the pool stamps its id on it. */
export type RequestBody = WorkerRequest extends infer R ? R extends unknown ? Omit<R, "id"> : never
  : never;

export interface SharedSecretResult {
  sharedSecret: Uint8Array;
}
export interface EncapResult {
  ciphertext: Uint8Array;
  sharedSecret: Uint8Array;
}
export interface KeypairResult {
  publicKey: Uint8Array;
  secretKey: Uint8Array;
}
// deno-lint-ignore ban-types
export type EmptyResult = {};

/** What each op resolves to, so the pool's call sites are typed end to end. */
export interface ResultOf {
  mcelieceDecap: SharedSecretResult;
  mcelieceEncap: EncapResult;
  registerMcEliecePk: EmptyResult;
  unregisterMcEliecePk: EmptyResult;
  sntrupKeypair: KeypairResult;
  sntrupDecap: SharedSecretResult;
  sntrupEncap: EncapResult;
  respond: ResponderOutcome | { ok: false; reason: "malformed" };
  addEphemeral: EmptyResult;
  keepEphemeral: EmptyResult;
  shutdown: EmptyResult;
}

export type WorkerReply =
  | { op: "ready"; backend: KemBackendName }
  | { op: "initFailed"; error: string }
  | { op: "reply"; id: number; ok: true; result: ResultOf[WorkerOp] }
  | { op: "reply"; id: number; ok: false; error: string; rejected: boolean }
  | {
    op: "replies";
    replies: Extract<WorkerReply, { op: "reply" }>[];
  };

// Typed view of the worker global: avoids pulling the deno.worker lib into a program that also
// type-checks window-side code.
interface WorkerScope {
  onmessage: ((ev: MessageEvent<InitMessage | WorkerRequest | BatchMessage>) => void) | null;
  postMessage(message: WorkerReply, options?: { transfer?: Transferable[] }): void;
  close(): void;
}

const scope = globalThis as unknown as WorkerScope;

let mceliece: Kem | undefined;
let sntrup: Kem | undefined;
let serverKey: Decapsulator | undefined;
const encapsulators = new Map<number, Encapsulator>();
let staticX25519Sk: Uint8Array | undefined;
/** The live ephemeral slots' secrets, handed to every worker when made, erased when expired. */
const ephemeral = new Map<number, { x25519Sk: Uint8Array; sntrupSk: Uint8Array }>();
/** The ephemeral slot that opened this worker's last handshake: tried first (see preferSlot). */
let lastOpenedSlot = -1;
let started = false;
let stopped = false;

function buffersOf(...arrays: Uint8Array[]): ArrayBuffer[] {
  return arrays.map((a) => a.buffer as ArrayBuffer);
}

function wipeAll(): void {
  serverKey?.dispose();
  serverKey = undefined;
  for (const enc of encapsulators.values()) enc.dispose();
  encapsulators.clear();
  if (staticX25519Sk) wipe(staticX25519Sk);
  staticX25519Sk = undefined;
  for (const e of ephemeral.values()) wipe(e.x25519Sk, e.sntrupSk);
  ephemeral.clear();
}

async function init(msg: InitMessage): Promise<void> {
  try {
    const backend = await loadKemBackend(msg.kem);
    mceliece = backend.mceliece;
    sntrup = backend.sntrup;
    if (msg.mcelieceSecretKey) serverKey = mceliece.decapsulator(msg.mcelieceSecretKey);
    if (msg.x25519SecretKey) {
      // Whole handshakes run here: the same AEAD, X25519 and SHAKE256 as the packet thread.
      installAeadBackend();
      installHashBackend();
      staticX25519Sk = msg.x25519SecretKey.slice();
    }
    scope.postMessage({ op: "ready", backend: backend.name });
  } catch (e) {
    scope.postMessage({ op: "initFailed", error: e instanceof Error ? e.message : String(e) });
  } finally {
    msg.mcelieceSecretKey?.fill(0);
    msg.x25519SecretKey?.fill(0);
  }
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(what);
  return value;
}

/** Runs one request; returns the result and the buffers to transfer with it. */
function run(req: WorkerRequest): [ResultOf[WorkerOp], ArrayBuffer[]] {
  const mc = need(mceliece, "worker not initialised");
  const sn = need(sntrup, "worker not initialised");
  switch (req.op) {
    case "mcelieceDecap": {
      const dec = need(serverKey, "no McEliece secret key was given to the pool");
      const sharedSecret = dec.decapsulate(req.ct);
      return [{ sharedSecret }, buffersOf(sharedSecret)];
    }
    case "mcelieceEncap": {
      const enc = need(encapsulators.get(req.pkId), `unknown McEliece public key id ${req.pkId}`);
      const r = enc.encapsulate();
      return [r, buffersOf(r.ciphertext, r.sharedSecret)];
    }
    case "registerMcEliecePk": {
      if (encapsulators.has(req.pkId)) throw new Error(`public key id ${req.pkId} in use`);
      encapsulators.set(req.pkId, mc.encapsulator(req.pk));
      return [{}, []];
    }
    case "unregisterMcEliecePk": {
      encapsulators.get(req.pkId)?.dispose();
      encapsulators.delete(req.pkId);
      return [{}, []];
    }
    case "sntrupKeypair": {
      const r = sn.keypair();
      return [r, buffersOf(r.publicKey, r.secretKey)];
    }
    case "sntrupDecap": {
      const sharedSecret = sn.decapsulate(req.ct, req.sk);
      return [{ sharedSecret }, buffersOf(sharedSecret)];
    }
    case "sntrupEncap": {
      const r = sn.encapsulate(req.pk);
      return [r, buffersOf(r.ciphertext, r.sharedSecret)];
    }
    case "respond": {
      const dec = need(serverKey, "no McEliece secret key was given to the pool");
      const sk = need(staticX25519Sk, "no X25519 secret key was given to the pool");
      const msg = parseInitiation(req.data);
      if (!msg) return [{ ok: false, reason: "malformed" }, []];
      const slots = [];
      for (const id of req.slots) {
        const e = ephemeral.get(id);
        if (e) slots.push({ x25519Sk: e.x25519Sk, id });
      }
      const kems = {
        mcelieceDecap: (c0: Uint8Array) => dec.decapsulate(c0),
        sntrupDecap: (ct: Uint8Array, slot: number) => {
          const e = ephemeral.get(slot);
          return e ? sn.decapsulate(ct, e.sntrupSk) : null;
        },
      };
      const r = respondInitiation(msg, kems, sk, preferSlot(slots, lastOpenedSlot));
      if (r.ok) lastOpenedSlot = r.slot;
      return [r, r.ok ? buffersOf(r.tid, r.i2r, r.r2i) : []];
    }
    case "addEphemeral": {
      const old = ephemeral.get(req.slot);
      if (old) wipe(old.x25519Sk, old.sntrupSk);
      ephemeral.set(req.slot, { x25519Sk: req.x25519Sk, sntrupSk: req.sntrupSk });
      return [{}, []];
    }
    case "keepEphemeral": {
      for (const [slot, e] of [...ephemeral]) {
        if (req.slots.includes(slot)) continue;
        wipe(e.x25519Sk, e.sntrupSk);
        ephemeral.delete(slot);
      }
      return [{}, []];
    }
    case "shutdown": {
      wipeAll();
      stopped = true;
      return [{}, []];
    }
  }
}

type Reply = Extract<WorkerReply, { op: "reply" }>;

/** A batch's replies go back at least every REPLY_CHUNK requests or REPLY_MS of work. */
const REPLY_CHUNK = 8;
const REPLY_MS = 2;

/** Runs one request and says how it went; the buffers to transfer go into `transfer`. */
function answer(msg: WorkerRequest, transfer: ArrayBuffer[]): Reply {
  try {
    const [result, buffers] = run(msg);
    transfer.push(...buffers);
    return { op: "reply", id: msg.id, ok: true, result };
  } catch (e) {
    return {
      op: "reply",
      id: msg.id,
      ok: false,
      error: e instanceof Error ? e.message : String(e),
      rejected: e instanceof KemRejectedError,
    };
  } finally {
    // This worker's copy of an ephemeral secret key is ours to erase.
    if (msg.op === "sntrupDecap") msg.sk.fill(0);
  }
}

scope.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.op === "init") {
    if (started) return;
    started = true;
    void init(msg);
    return;
  }
  if (stopped) return;
  if (msg.op === "batch") {
    // Requests the pool sent together are answered in chunks, not all at the end: the pool
    // refills from each chunk while this worker works on the rest of the batch, so it never
    // sits idle waiting for the packet thread (one reply per batch left it ~40 % idle).
    let replies: Reply[] = [];
    let transfer: ArrayBuffer[] = [];
    let since = performance.now();
    for (const req of msg.requests) {
      if (stopped) break;
      replies.push(answer(req, transfer));
      const t = performance.now();
      if (replies.length >= REPLY_CHUNK || t - since >= REPLY_MS) {
        scope.postMessage({ op: "replies", replies }, { transfer });
        replies = [];
        transfer = [];
        since = t;
      }
    }
    if (replies.length > 0) scope.postMessage({ op: "replies", replies }, { transfer });
  } else {
    const transfer: ArrayBuffer[] = [];
    scope.postMessage(answer(msg, transfer), { transfer });
  }
  if (stopped) scope.close();
};
