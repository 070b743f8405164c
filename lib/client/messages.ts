// Messages between the client's privileged supervisor and its unprivileged worker, over a
// SOCK_SEQPACKET pair. The supervisor only moves DNS answers between the kernel's queue and
// the worker; it never parses them.
//
//   supervisor → worker  DNS     01 || u32be id || IPv4 packet
//   worker → supervisor  VERDICT 02 || u32be id || 00            (pass unchanged)
//                                02 || u32be id || 01 || packet  (replace with packet)
//   worker → supervisor  READY   03                              (privileges dropped, serving)

import { readU32be, writeU32be } from "../core/bytes.ts";

export const MSG_DNS = 1;
export const MSG_VERDICT = 2;
export const MSG_READY = 3;

export function encodeDns(id: number, packet: Uint8Array): Uint8Array {
  const m = new Uint8Array(5 + packet.length);
  m[0] = MSG_DNS;
  writeU32be(m, 1, id >>> 0);
  m.set(packet, 5);
  return m;
}

export function encodeVerdict(id: number, replacement: Uint8Array | null): Uint8Array {
  const m = new Uint8Array(6 + (replacement?.length ?? 0));
  m[0] = MSG_VERDICT;
  writeU32be(m, 1, id >>> 0);
  if (replacement) {
    m[5] = 1;
    m.set(replacement, 6);
  }
  return m;
}

export type ChannelMessage =
  | { type: "dns"; id: number; packet: Uint8Array }
  | { type: "verdict"; id: number; replacement: Uint8Array | null }
  | { type: "ready" };

/** Parses one message; null for anything malformed. */
export function decodeChannelMessage(m: Uint8Array): ChannelMessage | null {
  if (m.length === 1 && m[0] === MSG_READY) return { type: "ready" };
  if (m.length < 5) return null;
  const id = readU32be(m, 1);
  if (m[0] === MSG_DNS) return { type: "dns", id, packet: m.subarray(5) };
  if (m[0] === MSG_VERDICT && m.length >= 6) {
    if (m[5] === 0 && m.length === 6) return { type: "verdict", id, replacement: null };
    if (m[5] === 1 && m.length > 6) return { type: "verdict", id, replacement: m.subarray(6) };
  }
  return null;
}
