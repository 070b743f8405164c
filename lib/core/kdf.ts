// pq1's stream kdf: keys are consecutive 32-byte pieces of a ChaCha20 keystream.

import { chacha20Stream } from "./aead.ts";

const ZERO_NONCE = new Uint8Array(8);

/**
 * kdf(n, k) and kdf(n, k, x): returns n fresh 32-byte keys. With `x` (32 bytes), first
 * k' = ChaCha20(k, nonce x[8:16], counter x[0:8]) truncated to 32 bytes, then the keys come
 * from ChaCha20(k', nonce x[24:32], counter x[16:24]). Inputs are not modified.
 */
export function kdf(n: number, key: Uint8Array, input?: Uint8Array): Uint8Array[] {
  if (key.length !== 32) throw new Error("kdf key must be 32 bytes");
  const stream = new Uint8Array(32 * n);
  if (input === undefined || input.length === 0) {
    kdfInto(key, stream);
  } else {
    if (input.length !== 32) throw new Error("kdf input must be 32 bytes");
    const mid = new Uint8Array(32);
    chacha20Stream(key, input.subarray(8, 16), input.subarray(0, 8), mid);
    chacha20Stream(mid, input.subarray(24, 32), input.subarray(16, 24), stream);
    mid.fill(0);
  }
  const keys: Uint8Array[] = [];
  for (let i = 0; i < n; i++) keys.push(stream.subarray(32 * i, 32 * i + 32));
  return keys;
}

/**
 * kdf(out.length / 32, key) written into `out`, key i at 32 * i: one buffer and no views (a
 * tunnel keeps its packet keys this way, ~100 bytes of heap less per key).
 */
export function kdfInto(key: Uint8Array, out: Uint8Array): void {
  if (key.length !== 32) throw new Error("kdf key must be 32 bytes");
  if (out.length % 32 !== 0) throw new Error("kdf output must be whole keys");
  chacha20Stream(key, ZERO_NONCE, null, out);
}
