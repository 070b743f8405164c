// Structure-aware mutations: each seed input knows its kind, and the kind names the offsets
// where its fields lie (message type, tunnel id, epoch, counter, lengths, addresses, ports), so
// mutations hit the parser's decisions rather than only payload bytes.

import type { Prng } from "../helpers/prng.ts";

export type Kind = "tunnel" | "cookie" | "handshake" | "ipv4" | "dns" | "keymsg" | "channel";

export interface Seed {
  kind: Kind;
  bytes: Uint8Array;
}

/** [offset, width] of the fields worth hitting, per kind. */
const FIELDS: Record<Kind, [number, number][]> = {
  tunnel: [[0, 2], [2, 1], [33, 1], [34, 2], [36, 4], [40, 1], [-1, 1]],
  cookie: [[0, 1], [7, 1], [8, 8], [16, 4], [24, 4], [143, 1], [144, 2], [178, 2], [180, 4]],
  handshake: [[0, 2], [2, 1], [195, 1], [196, 1], [228, 1], [244, 1], [1282, 1], [1298, 1]],
  ipv4: [
    [0, 1],
    [2, 2],
    [6, 2],
    [8, 1],
    [9, 1],
    [10, 2],
    [12, 4],
    [16, 4],
    [20, 2],
    [22, 2],
    [
      24,
      2,
    ],
    [26, 2],
    [32, 1],
  ],
  dns: [
    [0, 1],
    [2, 2],
    [6, 2],
    [9, 1],
    [20, 2],
    [24, 2],
    [28, 2],
    [30, 2],
    [32, 2],
    [34, 2],
    [
      36,
      2,
    ],
    [38, 2],
    [40, 1],
    [41, 1],
    [50, 1],
    [60, 2],
  ],
  keymsg: [[0, 2], [2, 2], [4, 1], [5, 2], [7, 2], [9, 2]],
  channel: [[0, 1], [1, 4], [5, 1], [6, 1]],
};

const INTERESTING = [
  0,
  1,
  2,
  3,
  4,
  5,
  17,
  18,
  89,
  90,
  0x7f,
  0x80,
  0xff,
  0x100,
  0x7fff,
  0x8000,
  0xffff,
];
const INTERESTING32 = [0, 1, 90, 0x7fffffff, 0x80000000, 0xffffffff];

function writeUint(b: Uint8Array, at: number, width: number, v: number): void {
  for (let i = width - 1; i >= 0 && at + i < b.length; i--) {
    if (at + i >= 0) b[at + i] = v & 0xff;
    v = Math.floor(v / 256);
  }
}

function readUint(b: Uint8Array, at: number, width: number): number {
  let v = 0;
  for (let i = 0; i < width; i++) v = v * 256 + (b[at + i] ?? 0);
  return v;
}

/** One to three mutations of a copy of `seed`; `other` is spliced in sometimes. */
export function mutate(rng: Prng, seed: Seed, other: Seed): Uint8Array {
  let b = seed.bytes.slice();
  const n = 1 + rng.int(3);
  for (let m = 0; m < n; m++) {
    const r = rng.int(10);
    if (r <= 3) {
      // a field: an interesting value, or one off its current value
      const [off, width] = rng.pick(FIELDS[seed.kind]);
      const at = off < 0 ? b.length + off : off;
      if (at >= b.length) continue;
      const cur = readUint(b, at, width);
      const max = 2 ** (8 * width);
      const v = rng.chance(0.5)
        ? rng.pick(width === 4 ? INTERESTING32 : INTERESTING)
        : (cur + (rng.chance(0.5) ? 1 : max - 1)) % max;
      writeUint(b, at, width, v);
    } else if (r === 4 && b.length > 0) {
      b[rng.int(b.length)] ^= 1 << rng.int(8);
    } else if (r === 5 && b.length > 0) {
      b[rng.int(b.length)] = rng.int(256);
    } else if (r === 6) {
      // truncate, often at a field boundary
      const cut = rng.chance(0.5) ? rng.pick(FIELDS[seed.kind])[0] : rng.int(b.length + 1);
      b = b.slice(0, Math.max(0, Math.min(b.length, cut)));
    } else if (r === 7) {
      const extra = rng.bytes(1 + rng.int(64));
      const out = new Uint8Array(b.length + extra.length);
      out.set(b);
      out.set(extra, b.length);
      b = out;
    } else if (r === 8) {
      // splice: a prefix of this one, the rest of another (e.g. a cookie before a packet)
      const at = rng.int(b.length + 1);
      const from = rng.int(other.bytes.length + 1);
      const out = new Uint8Array(at + other.bytes.length - from);
      out.set(b.subarray(0, at));
      out.set(other.bytes.subarray(from), at);
      b = out;
    } else if (b.length > 1) {
      // copy a region over another
      const len = 1 + rng.int(Math.min(32, b.length - 1));
      const src = rng.int(b.length - len + 1);
      const dst = rng.int(b.length - len + 1);
      b.copyWithin(dst, src, src + len);
    }
  }
  return b;
}
