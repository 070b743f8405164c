// The original (DJB) ChaCha20 keystream: 64-bit block counter in words 12-13, 64-bit nonce in
// words 14-15. pq1's kdf starts the counter at attacker-influenced values anywhere in
// [0, 2^64), so the counter carries from word 12 into word 13 and wraps at 2^64 (as libsodium).
// IETF ChaCha20 libraries only know a 32-bit counter, hence this small implementation.

const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574];

function rotl(x: number, n: number): number {
  return (x << n) | (x >>> (32 - n));
}

/** One 64-byte block of keystream for `state`, written into `out` at `offset`. */
function block(state: Uint32Array, work: Uint32Array, out: Uint8Array, offset: number): void {
  work.set(state);
  for (let round = 0; round < 10; round++) {
    quarter(work, 0, 4, 8, 12);
    quarter(work, 1, 5, 9, 13);
    quarter(work, 2, 6, 10, 14);
    quarter(work, 3, 7, 11, 15);
    quarter(work, 0, 5, 10, 15);
    quarter(work, 1, 6, 11, 12);
    quarter(work, 2, 7, 8, 13);
    quarter(work, 3, 4, 9, 14);
  }
  for (let i = 0; i < 16; i++) {
    const v = (work[i] + state[i]) >>> 0;
    const o = offset + 4 * i;
    out[o] = v & 0xff;
    out[o + 1] = (v >>> 8) & 0xff;
    out[o + 2] = (v >>> 16) & 0xff;
    out[o + 3] = v >>> 24;
  }
}

function quarter(x: Uint32Array, a: number, b: number, c: number, d: number): void {
  x[a] = (x[a] + x[b]) >>> 0;
  x[d] = rotl(x[d] ^ x[a], 16);
  x[c] = (x[c] + x[d]) >>> 0;
  x[b] = rotl(x[b] ^ x[c], 12);
  x[a] = (x[a] + x[b]) >>> 0;
  x[d] = rotl(x[d] ^ x[a], 8);
  x[c] = (x[c] + x[d]) >>> 0;
  x[b] = rotl(x[b] ^ x[c], 7);
}

function le32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}

/**
 * Fills `out` with keystream for `key` (32 bytes), `nonce` (8 bytes) starting at the block
 * counter given as 8 little-endian bytes `counter` (or zero).
 */
export function chacha20Keystream(
  key: Uint8Array,
  nonce: Uint8Array,
  counter: Uint8Array | null,
  out: Uint8Array,
): void {
  const state = new Uint32Array(16);
  const work = new Uint32Array(16);
  state.set(SIGMA);
  for (let i = 0; i < 8; i++) state[4 + i] = le32(key, 4 * i);
  state[12] = counter ? le32(counter, 0) : 0;
  state[13] = counter ? le32(counter, 4) : 0;
  state[14] = le32(nonce, 0);
  state[15] = le32(nonce, 4);
  const full = new Uint8Array(64);
  for (let o = 0; o < out.length; o += 64) {
    if (out.length - o >= 64) {
      block(state, work, out, o);
    } else {
      block(state, work, full, 0);
      out.set(full.subarray(0, out.length - o), o);
    }
    state[12] = (state[12] + 1) >>> 0;
    if (state[12] === 0) state[13] = (state[13] + 1) >>> 0; // carry; wraps at 2^64
  }
  state.fill(0);
  work.fill(0);
  full.fill(0);
}
