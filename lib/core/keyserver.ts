// The key server's answer to one datagram: a node of the long-term key tree or the current
// ephemeral public keys, only ever as long as the request (so it cannot amplify).

import { ephemeralKeyResponse, parseKeyRequest, staticKeyResponse } from "./keymsg.ts";
import type { KeyTree } from "./keytree.ts";
import type { EphemeralKeyStore } from "./ephemeral.ts";

export type KeyAnswer =
  | { ok: true; response: Uint8Array; kind: "static" | "ephemeral" }
  | { ok: false; reason: "malformed" | "no-ephemeral-keys" | "length" };

export function answerKeyRequest(
  request: Uint8Array,
  tree: KeyTree,
  ephemeral: EphemeralKeyStore,
  now: number,
): KeyAnswer {
  const req = parseKeyRequest(request);
  if (!req) return { ok: false, reason: "malformed" };
  let response: Uint8Array;
  if (req.kind === "static") {
    response = staticKeyResponse(req.depth, req.pos, tree.node(req.depth, req.pos)!);
  } else {
    const keys = ephemeral.current(now);
    if (!keys) return { ok: false, reason: "no-ephemeral-keys" };
    response = ephemeralKeyResponse(keys.sntrupPk, keys.x25519Pk);
  }
  if (response.length !== request.length) return { ok: false, reason: "length" };
  return { ok: true, response, kind: req.kind };
}
