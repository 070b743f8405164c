// pq1 announcements in DNS names: "pq1" || base32(key hash) [|| base32(u16be(crypto port)) ||
// base32(u16be(key port))].

import { base32Decode, base32Encode } from "./base32.ts";
import { u16be } from "./bytes.ts";

const HASH_CHARS = 52;
const PORT_CHARS = 4;
const SUPPORTED_MAJOR_VERSIONS = "1";

export interface Announcement {
  keyHash: Uint8Array;
  /** Present only when the name carries ports; otherwise DNS TXT records say. */
  cryptoPort?: number;
  keyPort?: number;
}

/** The pq1 label for a key hash, optionally with ports. */
export function formatPq1Label(
  keyHash: Uint8Array,
  ports?: { crypto: number; key: number },
): string {
  if (keyHash.length !== 32) throw new Error("key hash must be 32 bytes");
  let label = "pq1" + base32Encode(keyHash);
  if (ports) label += base32Encode(u16be(ports.crypto)) + base32Encode(u16be(ports.key));
  return label;
}

function decodePort(text: string): number | null {
  const b = base32Decode(text);
  return b === null ? null : (b[0] << 8) | b[1];
}

/**
 * Finds the announcement in a DNS name, or null when it carries none (never an error).
 * Labels are scanned left to right. As in the reference, a pq<version> label of another
 * length is skipped, while one of the right length that does not decode ends the search.
 */
export function parsePq1Name(name: string): Announcement | null {
  for (const raw of name.split(".")) {
    if (raw.length <= 3) continue;
    const label = raw.toLowerCase();
    if (!label.startsWith("pq") || !SUPPORTED_MAJOR_VERSIONS.includes(label[2])) continue;
    const data = label.slice(3);
    if (data.length === HASH_CHARS) {
      const keyHash = base32Decode(data);
      return keyHash ? { keyHash } : null;
    }
    if (data.length === HASH_CHARS + 2 * PORT_CHARS) {
      const keyHash = base32Decode(data.slice(0, HASH_CHARS));
      const cryptoPort = decodePort(data.slice(HASH_CHARS, HASH_CHARS + PORT_CHARS));
      const keyPort = decodePort(data.slice(HASH_CHARS + PORT_CHARS));
      if (!keyHash || cryptoPort === null || keyPort === null) return null;
      return { keyHash, cryptoPort, keyPort };
    }
  }
  return null;
}
