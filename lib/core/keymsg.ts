// Key-server messages: type (2 bytes) || field*, field = u16be(len) || bytes with len > 0.
// A server answers only with a response exactly as long as the request (anti-amplification),
// so requests carry zero padding of the expected response size.

import { readU16be, u16le, writeU16be } from "./bytes.ts";
import {
  MSG_EPHEMERAL_KEY_REQUEST,
  MSG_EPHEMERAL_KEY_RESPONSE,
  MSG_STATIC_KEY_REQUEST,
  MSG_STATIC_KEY_RESPONSE,
  SNTRUP_PK_BYTES,
  X25519_BYTES,
} from "./constants.ts";
import { isValidNode, nodeLength } from "./keytree.ts";

const MAX_FIELDS = 4;

/** type || (u16be length || field)*: the framing of every key server message. */
function encodeKeyFields(type: number, fields: Uint8Array[]): Uint8Array {
  let n = 2;
  for (const f of fields) {
    if (f.length === 0 || f.length > 0xffff) throw new Error("field length out of range");
    n += 2 + f.length;
  }
  const out = new Uint8Array(n);
  writeU16be(out, 0, type);
  let o = 2;
  for (const f of fields) {
    writeU16be(out, o, f.length);
    out.set(f, o + 2);
    o += 2 + f.length;
  }
  return out;
}

/** Splits a message into its type and fields; null if any length is off. */
function decodeKeyFields(msg: Uint8Array): { type: number; fields: Uint8Array[] } | null {
  if (msg.length < 2) return null;
  const fields: Uint8Array[] = [];
  let o = 2;
  while (o < msg.length) {
    if (o + 2 > msg.length || fields.length === MAX_FIELDS) return null;
    const len = readU16be(msg, o);
    if (len === 0 || o + 2 + len > msg.length) return null;
    fields.push(msg.subarray(o + 2, o + 2 + len));
    o += 2 + len;
  }
  return { type: readU16be(msg, 0), fields };
}

/** One request per depth and padding length, with position 0: a download sends 937 requests,
 * each a copy of one of these with its position written in (bytes 7-8). At most a handful. */
const requestTemplates = new Map<number, Uint8Array>();
const REQUEST_POS_OFFSET = 7; // type, u16be(1), depth, u16be(2)

export function staticKeyRequest(depth: number, pos: number): Uint8Array {
  const padding = nodeLength(depth, pos);
  const key = depth * 0x10000 + padding;
  let template = requestTemplates.get(key);
  if (template === undefined) {
    template = encodeKeyFields(MSG_STATIC_KEY_REQUEST, [
      new Uint8Array([depth]),
      u16le(0),
      new Uint8Array(padding),
    ]);
    if (requestTemplates.size < 16) requestTemplates.set(key, template);
  }
  const out = template.slice();
  out[REQUEST_POS_OFFSET] = pos & 0xff;
  out[REQUEST_POS_OFFSET + 1] = (pos >> 8) & 0xff;
  return out;
}

export function staticKeyResponse(depth: number, pos: number, node: Uint8Array): Uint8Array {
  return encodeKeyFields(MSG_STATIC_KEY_RESPONSE, [new Uint8Array([depth]), u16le(pos), node]);
}

export function ephemeralKeyRequest(): Uint8Array {
  return encodeKeyFields(MSG_EPHEMERAL_KEY_REQUEST, [
    new Uint8Array(SNTRUP_PK_BYTES),
    new Uint8Array(X25519_BYTES),
  ]);
}

export function ephemeralKeyResponse(sntrupPk: Uint8Array, x25519Pk: Uint8Array): Uint8Array {
  return encodeKeyFields(MSG_EPHEMERAL_KEY_RESPONSE, [sntrupPk, x25519Pk]);
}

export type KeyRequest =
  | { kind: "static"; depth: number; pos: number }
  | { kind: "ephemeral" };

/** Parses a request as the key server sees it; null for anything malformed. */
export function parseKeyRequest(msg: Uint8Array): KeyRequest | null {
  const m = decodeKeyFields(msg);
  if (!m) return null;
  if (m.type === MSG_STATIC_KEY_REQUEST) {
    const [depthField, posField, padding] = m.fields;
    if (m.fields.length !== 3 || depthField.length !== 1 || posField.length !== 2) return null;
    const depth = depthField[0];
    const pos = posField[0] | (posField[1] << 8);
    if (!isValidNode(depth, pos) || padding.length !== nodeLength(depth, pos)) return null;
    return { kind: "static", depth, pos };
  }
  if (m.type === MSG_EPHEMERAL_KEY_REQUEST) {
    if (m.fields.length !== 2) return null;
    if (m.fields[0].length !== SNTRUP_PK_BYTES || m.fields[1].length !== X25519_BYTES) return null;
    return { kind: "ephemeral" };
  }
  return null;
}

export type KeyResponse =
  | { kind: "static"; depth: number; pos: number; node: Uint8Array }
  | { kind: "ephemeral"; sntrupPk: Uint8Array; x25519Pk: Uint8Array };

/** Parses a response as the client sees it; null for anything malformed. */
export function parseKeyResponse(msg: Uint8Array): KeyResponse | null {
  const m = decodeKeyFields(msg);
  if (!m) return null;
  if (m.type === MSG_STATIC_KEY_RESPONSE) {
    if (m.fields.length !== 3 || m.fields[0].length !== 1 || m.fields[1].length !== 2) return null;
    const depth = m.fields[0][0];
    const pos = m.fields[1][0] | (m.fields[1][1] << 8);
    if (!isValidNode(depth, pos) || m.fields[2].length !== nodeLength(depth, pos)) return null;
    return { kind: "static", depth, pos, node: m.fields[2] };
  }
  if (m.type === MSG_EPHEMERAL_KEY_RESPONSE) {
    if (m.fields.length !== 2) return null;
    if (m.fields[0].length !== SNTRUP_PK_BYTES || m.fields[1].length !== X25519_BYTES) return null;
    return { kind: "ephemeral", sntrupPk: m.fields[0], x25519Pk: m.fields[1] };
  }
  return null;
}
