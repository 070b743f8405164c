// The long-term public key as a Merkle tree of 1152-byte nodes, so that a client can fetch it
// over UDP in verifiable pieces. Root (depth 0) = h(depth-1 node) is the `pkhash` in the name.

import { equalBytes } from "./bytes.ts";
import { h } from "./crypto.ts";
import { KEY_SEGMENT_BYTES as S, MCELIECE_PK_BYTES, X25519_BYTES } from "./constants.ts";

const LEAVES: number = Math.ceil(MCELIECE_PK_BYTES / S); // 910
const HASHES_PER_NODE = S / 32; // 36
const DEPTH2_NODES: number = Math.ceil((LEAVES * 32) / S); // 26

/** Number of nodes at each depth 0..3. */
export const TREE_SHAPE = [1, 1, DEPTH2_NODES, LEAVES] as const;

/** The length of node (depth, pos) — known before the node is, so requests can be padded. */
export function nodeLength(depth: number, pos: number): number {
  if (!isValidNode(depth, pos)) throw new Error(`no key tree node (${depth}, ${pos})`);
  switch (depth) {
    case 0:
      return 32;
    case 1:
      return DEPTH2_NODES * 32;
    case 2:
      return Math.min(S, LEAVES * 32 - pos * S);
    default:
      return pos === LEAVES - 1 ? MCELIECE_PK_BYTES - pos * S + X25519_BYTES : S;
  }
}

export function isValidNode(depth: number, pos: number): boolean {
  return Number.isInteger(depth) && Number.isInteger(pos) && depth >= 0 && depth <= 3 &&
    pos >= 0 && pos < TREE_SHAPE[depth];
}

/** All nodes of a server's key tree (built once at start, served read-only). */
export class KeyTree {
  private constructor(readonly levels: Uint8Array[][]) {}

  static build(mceliecePk: Uint8Array, x25519Pk: Uint8Array): KeyTree {
    if (mceliecePk.length !== MCELIECE_PK_BYTES) throw new Error("bad McEliece public key size");
    if (x25519Pk.length !== X25519_BYTES) throw new Error("bad X25519 public key size");
    const leaves: Uint8Array[] = [];
    for (let i = 0; i < LEAVES; i++) {
      const piece = mceliecePk.subarray(i * S, Math.min((i + 1) * S, MCELIECE_PK_BYTES));
      if (i < LEAVES - 1) {
        leaves.push(piece);
      } else {
        const last = new Uint8Array(piece.length + X25519_BYTES);
        last.set(piece);
        last.set(x25519Pk, piece.length);
        leaves.push(last);
      }
    }
    const leafHashes = new Uint8Array(LEAVES * 32);
    leaves.forEach((leaf, i) => leafHashes.set(h(leaf), 32 * i));
    const depth2: Uint8Array[] = [];
    for (let j = 0; j < DEPTH2_NODES; j++) {
      depth2.push(leafHashes.subarray(j * S, Math.min((j + 1) * S, leafHashes.length)));
    }
    const depth1 = new Uint8Array(DEPTH2_NODES * 32);
    depth2.forEach((node, j) => depth1.set(h(node), 32 * j));
    return new KeyTree([[h(depth1)], [depth1], depth2, leaves]);
  }

  get root(): Uint8Array {
    return this.levels[0][0];
  }

  node(depth: number, pos: number): Uint8Array | null {
    return isValidNode(depth, pos) ? this.levels[depth][pos] : null;
  }
}

/**
 * Reassembles a server's keys from nodes arriving in any order, checking each against its
 * parent, which must already be verified (so fetch depth 1, then 2, then 3).
 */
export class KeyTreeAssembler {
  private readonly levels: (Uint8Array | undefined)[][] = TREE_SHAPE.map((n) =>
    new Array<Uint8Array | undefined>(n)
  );
  private missingCount: number[] = [...TREE_SHAPE];

  constructor(readonly keyHash: Uint8Array) {
    if (keyHash.length !== 32) throw new Error("key hash must be 32 bytes");
    this.levels[0][0] = keyHash;
    this.missingCount[0] = 0;
  }

  has(depth: number, pos: number): boolean {
    return isValidNode(depth, pos) && this.levels[depth][pos] !== undefined;
  }

  /** Expected hash of a node, from its verified parent; null while the parent is missing. */
  private expectedHash(depth: number, pos: number): Uint8Array | null {
    if (depth === 1) return this.keyHash;
    const parentPos = depth === 2 ? 0 : Math.floor(pos / HASHES_PER_NODE);
    const parent = this.levels[depth - 1][parentPos];
    if (!parent) return null;
    const o = depth === 2 ? 32 * pos : (32 * pos) % S;
    return parent.subarray(o, o + 32);
  }

  /** Accepts a node if it verifies; returns whether it was new and valid. */
  accept(depth: number, pos: number, data: Uint8Array): boolean {
    if (depth < 1 || !isValidNode(depth, pos) || this.has(depth, pos)) return false;
    if (data.length !== nodeLength(depth, pos)) return false;
    const expected = this.expectedHash(depth, pos);
    if (!expected || !equalBytes(h(data), expected)) return false;
    this.levels[depth][pos] = data.slice();
    this.missingCount[depth]--;
    return true;
  }

  /** Positions still missing at `depth`. */
  missing(depth: number): number[] {
    const out: number[] = [];
    for (let pos = 0; pos < TREE_SHAPE[depth]; pos++) {
      if (this.levels[depth][pos] === undefined) out.push(pos);
    }
    return out;
  }

  missingAt(depth: number): number {
    return this.missingCount[depth];
  }

  get complete(): boolean {
    return this.missingCount.every((n) => n === 0);
  }

  /** The verified keys, once complete. */
  keys(): { mceliecePk: Uint8Array; x25519Pk: Uint8Array } {
    if (!this.complete) throw new Error("key tree incomplete");
    const pk = new Uint8Array(MCELIECE_PK_BYTES);
    const leaves = this.levels[3] as Uint8Array[];
    for (let i = 0; i < LEAVES - 1; i++) pk.set(leaves[i], i * S);
    const last = leaves[LEAVES - 1];
    const tail = last.length - X25519_BYTES;
    pk.set(last.subarray(0, tail), (LEAVES - 1) * S);
    return { mceliecePk: pk, x25519Pk: last.slice(tail) };
  }
}
