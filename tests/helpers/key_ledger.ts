// Every tunnel packet key a device sealed with, by (tid, direction, epoch, counter), read off the
// wire. A key seen twice is a keystream reuse: the XOR of the two ciphertexts is the XOR of the
// two plaintexts.

import { COOKIE_BYTES, MSG_TUNNEL, TUNNEL_OVERHEAD } from "../../lib/core/constants.ts";
import { isCookie } from "../../lib/core/cookie.ts";

export type Direction = "client-to-server" | "server-to-client";

export class KeyLedger {
  private readonly seen = new Set<string>();
  readonly reuses: string[] = [];
  sealed = 0;

  /** Records the key of a datagram a device sent (a cookie in front is skipped). */
  record(datagram: Uint8Array, direction: Direction): void {
    const d = isCookie(datagram) && datagram.length > COOKIE_BYTES
      ? datagram.subarray(COOKIE_BYTES)
      : datagram;
    if (d.length < TUNNEL_OVERHEAD || ((d[0] << 8) | d[1]) !== MSG_TUNNEL) return;
    let tid = "";
    for (let i = 2; i < 34; i++) tid += d[i].toString(16).padStart(2, "0");
    const v = new DataView(d.buffer, d.byteOffset);
    const id = `${tid} ${direction} epoch ${v.getUint16(34)} ctr ${v.getUint32(36)}`;
    this.sealed++;
    if (this.seen.has(id)) this.reuses.push(id);
    else this.seen.add(id);
  }

  get size(): number {
    return this.seen.size;
  }
}
