// Protocol constants of pq1 (PQConnect 1.2.x). Values from the reference's own constants.

export const MAGIC = "pq1";
export const DEFAULT_KEY_DIR = "/etc/pqconnect/keys";
export const PRIVSEP_USER = "pqconnect";

export const CLIENT_PORT = 42423;
export const CRYPTO_PORT = 42424;
export const KEY_PORT = 42425;
export const SERVER_TUN_ADDRESS = "10.42.0.1";
export const CLIENT_TUN_ADDRESS = "10.43.0.1";
export const TUN_PREFIX = 16;

export const HASH_BYTES = 32;
export const KEY_BYTES = 32;
export const TAG_BYTES = 16;
export const NONCE_BYTES = 12;
export const TID_BYTES = 32;

export const MCELIECE_PK_BYTES = 1047319;
export const MCELIECE_SK_BYTES = 13948;
export const MCELIECE_CT_BYTES = 194;
export const SNTRUP_PK_BYTES = 1158;
export const SNTRUP_SK_BYTES = 1763;
export const SNTRUP_CT_BYTES = 1039;
export const X25519_BYTES = 32;

/** Message types: the first two bytes of every datagram. */
export const MSG_INITIATION = 0x0100;
export const MSG_TUNNEL = 0x0200;
export const MSG_HANDSHAKE_FAIL = 0x0300;
export const MSG_STATIC_KEY_REQUEST = 0xf000;
export const MSG_STATIC_KEY_RESPONSE = 0xf100;
export const MSG_EPHEMERAL_KEY_REQUEST = 0xf200;
export const MSG_EPHEMERAL_KEY_RESPONSE = 0xf300;

export const HANDSHAKE_BYTES = 2 + MCELIECE_CT_BYTES + 32 + 16 + SNTRUP_CT_BYTES + 16; // 1299
export const TUNNEL_HEADER_BYTES = 2 + TID_BYTES + 2 + 4; // 40
export const TUNNEL_OVERHEAD = TUNNEL_HEADER_BYTES + TAG_BYTES; // 56

export const EPOCH_SECONDS = 30;
export const EPOCH_LIFETIME_SECONDS = 120;
export const KEYS_PER_CHAIN_STEP = 18;
export const MAX_CHAIN_KEYS = 90;
export const MAX_EPOCHS = 5;
export const MAX_EPOCH_NUMBER = 0xffff; // the epoch travels as u16
export const PRECOMPUTED_CIPHERTEXTS = 360;

export const COOKIE_PREFIX: Uint8Array = new TextEncoder().encode("pqccookE");
export const COOKIE_BYTES = 144;

export const KEY_SEGMENT_BYTES = 1152;
