// Small byte helpers used everywhere. No allocation in the comparison and wipe paths.

export function hex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

export function fromHex(text: string): Uint8Array<ArrayBuffer> {
  if (text.length % 2 !== 0 || /[^0-9a-fA-F]/.test(text)) throw new Error("invalid hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Constant-time equality for equal-length inputs (length itself is not secret). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** Overwrites key material that is no longer needed. */
export function wipe(...buffers: (Uint8Array | undefined | null)[]): void {
  for (const b of buffers) b?.fill(0);
}

export function readU16be(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}

export function writeU16be(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

export function readU32be(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

export function writeU32be(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** A u64 (a cookie's timestamp), as a bigint: it may exceed 2^53. */
export function readU64be(b: Uint8Array, o: number): bigint {
  return (BigInt(readU32be(b, o)) << 32n) | BigInt(readU32be(b, o + 4));
}

export function u16be(v: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(2);
  writeU16be(b, 0, v);
  return b;
}

export function u32be(v: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(4);
  writeU32be(b, 0, v);
  return b;
}

export function u16le(v: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array([v & 0xff, (v >>> 8) & 0xff]);
}

export function u64be(v: bigint): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(8);
  writeU32be(b, 0, Number((v >> 32n) & 0xffffffffn));
  writeU32be(b, 4, Number(v & 0xffffffffn));
  return b;
}
