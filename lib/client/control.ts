// The client's local control socket: `pqconnect status` asks, the worker answers with one JSON
// document. Unix socket in the runtime directory; one request per connection, bounded.

import type { Logger } from "../core/log.ts";
import { concat } from "../core/bytes.ts";

const MAX_REQUEST = 64;

export function serveControl(
  path: string,
  status: () => unknown,
  log: Logger,
): { close(): void } {
  try {
    Deno.removeSync(path);
  } catch { /* not there: fine */ }
  const listener = Deno.listen({ transport: "unix", path });
  Deno.chmodSync(path, 0o660);
  (async () => {
    for await (const conn of listener) {
      handle(conn).catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch { /* already closed */ }
      });
    }
  })().catch((e) => log.debug(`control socket stopped: ${e}`));
  async function handle(conn: Deno.Conn): Promise<void> {
    const buf = new Uint8Array(MAX_REQUEST);
    const n = await conn.read(buf);
    const request = new TextDecoder().decode(buf.subarray(0, n ?? 0)).trim();
    const body = request === "status"
      ? JSON.stringify(status())
      : JSON.stringify({ error: `unknown request "${request.slice(0, 20)}"` });
    await conn.write(new TextEncoder().encode(body + "\n"));
  }
  return {
    close() {
      listener.close();
      try {
        Deno.removeSync(path);
      } catch { /* gone already */ }
    },
  };
}

/** Asks a running client for its status. */
export async function queryControl(path: string): Promise<unknown> {
  const conn = await Deno.connect({ transport: "unix", path });
  try {
    await conn.write(new TextEncoder().encode("status\n"));
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
      if (buf[n - 1] === 0x0a) break;
    }
    const text = new TextDecoder().decode(concat(...chunks));
    return JSON.parse(text);
  } finally {
    conn.close();
  }
}
