// Loads the reference vectors and key files copied from the reference implementation.

import { fromHex } from "../lib/core/bytes.ts";

const dir = new URL("./fixtures/", import.meta.url);

// deno-lint-ignore no-explicit-any
export const vectors: any = JSON.parse(
  Deno.readTextFileSync(new URL("reference-vectors.json", dir)),
);

export function fixture(name: string): Uint8Array {
  return Deno.readFileSync(new URL(name, dir));
}

export const fixtureDir = new URL(".", dir).pathname;

export { fromHex };
