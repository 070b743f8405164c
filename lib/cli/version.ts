// The version every command prints for --version (from deno.json, the one place it is kept).

import config from "../../deno.json" with { type: "json" };

export const VERSION: string = config.version;

export function versionLine(): string {
  return `pqconnect-ts version ${VERSION} (PQConnect protocol pq1, compatible with PQConnect 1.2.x)`;
}
