// pqconnect-ts as a library: the sans-IO pq1 protocol core. Everything here is pure (bytes,
// time and randomness are arguments) and byte-compatible with PQConnect 1.2.x.

export * from "./lib/core/constants.ts";
export { base32Decode, base32Encode } from "./lib/core/base32.ts";
export { type Announcement, formatPq1Label, parsePq1Name } from "./lib/core/names.ts";
export { kdf } from "./lib/core/kdf.ts";
export { h, openDetached, sealDetached, x25519PublicKey, x25519Shared } from "./lib/core/crypto.ts";
export {
  isValidNode,
  KeyTree,
  KeyTreeAssembler,
  nodeLength,
  TREE_SHAPE,
} from "./lib/core/keytree.ts";
export {
  ephemeralKeyRequest,
  ephemeralKeyResponse,
  type KeyRequest,
  type KeyResponse,
  parseKeyRequest,
  parseKeyResponse,
  staticKeyRequest,
  staticKeyResponse,
} from "./lib/core/keymsg.ts";
export {
  type HandshakeResult,
  initiate,
  type InitiatorInputs,
  parseInitiation,
  respondFinish,
  respondOpen,
} from "./lib/core/handshake.ts";
export { type OpenResult, TunnelSession } from "./lib/core/session.ts";
export {
  buildCookie,
  type CookieContents,
  CookieKeyring,
  cookieTimestamp,
  isCookie,
  openCookie,
} from "./lib/core/cookie.ts";
export { type EphemeralKeys, EphemeralKeyStore } from "./lib/core/ephemeral.ts";
export { ReplayCache } from "./lib/core/replay.ts";
export { KeyFetcher } from "./lib/client/keyfetch.ts";
export { answerKeyRequest } from "./lib/core/keyserver.ts";
