// DNSCurve base32: the input is one little-endian integer, emitted 5 bits at a time from the
// least significant end. Used for the key hash and ports in pq1 names.

const ALPHABET = "0123456789bcdfghjklmnpqrstuvwxyz";
const VALUES = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) {
  VALUES[ALPHABET.charCodeAt(i)] = i;
  VALUES[ALPHABET.toUpperCase().charCodeAt(i)] = i;
}

export function base32Encode(bytes: Uint8Array): string {
  let out = "";
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc |= b << bits;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[acc & 31];
      acc >>>= 5;
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[acc & 31];
  return out;
}

/**
 * Decodes `text` into floor(5*len/8) bytes. Returns null for a character outside the alphabet
 * or when the value has bits set beyond those bytes (it would not round-trip).
 */
export function base32Decode(text: string): Uint8Array | null {
  const out = new Uint8Array(Math.floor((5 * text.length) / 8));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? VALUES[c] : -1;
    if (v < 0) return null;
    acc |= v << bits;
    bits += 5;
    if (bits >= 8) {
      if (o >= out.length) return null;
      out[o++] = acc & 0xff;
      acc >>>= 8;
      bits -= 8;
    }
  }
  if (acc !== 0) return null; // leftover high bits do not fit
  return out;
}
