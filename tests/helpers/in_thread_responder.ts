// The server device's responder interface (ResponderCrypto.respondDeferred) on the test's own
// thread, for in-process tests that have no packet loop to drive a CryptoPool's deferred replies.
// It runs lib/core/responder.ts, the code the daemon's crypto workers run, on KEMs loaded here
// (native when --allow-ffi names the libraries, else WebAssembly), and answers in a later turn,
// as the daemon's pool does. The ephemeral secrets come from the test's store, which (unlike the
// daemon's) keeps them.

import { fixture } from "../fixtures.ts";
import type { ResponderCrypto, RespondReply } from "../../lib/server/device.ts";
import type { EphemeralKeyStore } from "../../lib/core/ephemeral.ts";
import { parseInitiation } from "../../lib/core/handshake.ts";
import { respondInitiation } from "../../lib/core/responder.ts";
import { type KemBackend, loadKemBackend } from "../../lib/runtime/kem_backend.ts";
import type { Decapsulator } from "../../wasm/kem.ts";

/** One KEM backend and one resident decapsulator of the fixture server key, per process. */
let loaded: Promise<{ kems: KemBackend; dec: Decapsulator }> | undefined;

function fixtureKems(): Promise<{ kems: KemBackend; dec: Decapsulator }> {
  loaded ??= loadKemBackend("auto").then((kems) => ({
    kems,
    dec: kems.mceliece.decapsulator(fixture("mceliece_sk")),
  }));
  return loaded;
}

export class InThreadResponder implements ResponderCrypto {
  /** McEliece and sntrup761 decapsulations run so far (what a flood costs). */
  decapsulations = 0;
  /** Handshakes handed over and not answered yet. */
  pending = 0;
  /** Sees each handshake's intermediate secrets after they were erased (tests check zeros). */
  onSecrets?: (secrets: readonly Uint8Array[]) => void;

  private constructor(
    private readonly kems: KemBackend,
    private readonly dec: Decapsulator,
    private readonly store: EphemeralKeyStore,
    private readonly x25519Sk: Uint8Array,
    /** As the pool's bound: past it a handshake is refused at once. */
    private readonly maxPending: number,
  ) {}

  /** A responder with the fixture server's keys and `store`'s ephemeral slots. */
  static async start(store: EphemeralKeyStore, maxPending = 128): Promise<InThreadResponder> {
    const { kems, dec } = await fixtureKems();
    return new InThreadResponder(kems, dec, store, fixture("x25519_sk"), maxPending);
  }

  respondDeferred(
    initiation: Uint8Array,
    slots: number[],
    done: (reply: RespondReply | null, error?: Error) => void,
  ): boolean {
    if (this.pending >= this.maxPending) return false;
    this.pending++;
    const data = initiation.slice();
    setTimeout(() => {
      this.pending--;
      let reply: RespondReply;
      try {
        reply = this.respond(data, slots);
      } catch (e) {
        return done(null, e instanceof Error ? e : new Error(String(e)));
      }
      done(reply);
    }, 0);
    return true;
  }

  /** What the worker's "respond" request does (wasm/crypto_worker.ts). */
  private respond(data: Uint8Array, slotIds: number[]): RespondReply {
    const msg = parseInitiation(data);
    if (!msg) return { ok: false, reason: "malformed" };
    const slots = [];
    for (const id of slotIds) {
      const e = this.store.get(id);
      if (e) slots.push({ x25519Sk: e.x25519Sk, id });
    }
    const kems = {
      mcelieceDecap: (c0: Uint8Array) => {
        this.decapsulations++;
        return this.dec.decapsulate(c0);
      },
      sntrupDecap: (ct: Uint8Array, slot: number) => {
        const e = this.store.get(slot);
        if (!e) return null;
        this.decapsulations++;
        return this.kems.sntrup.decapsulate(ct, e.sntrupSk);
      },
    };
    return respondInitiation(msg, kems, this.x25519Sk, slots, this.onSecrets);
  }
}
