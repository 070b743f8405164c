// The client's local control socket: `pqconnect status` asks, the worker answers with one JSON
// document. Unix socket in the runtime directory; one request per connection, bounded.

import type { Logger } from "../core/log.ts";
import { concat } from "../core/bytes.ts";

const MAX_REQUEST = 64;
/** A connection that has not been answered by then is closed (it may never send anything). */
export const CONTROL_IDLE_MS = 2000;
/** Connections served at once; more are closed at once (the status tool makes one). */
export const CONTROL_MAX_CONNECTIONS = 16;

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
  let open = 0;
  let refused = 0;
  (async () => {
    for await (const conn of listener) {
      const close = () => {
        try {
          conn.close();
        } catch { /* already closed */ }
      };
      if (open >= CONTROL_MAX_CONNECTIONS) {
        if (refused++ % 100 === 0) {
          log.warn(`control socket: ${refused} connection(s) refused (${open} open)`);
        }
        close();
        continue;
      }
      open++;
      const idle = setTimeout(close, CONTROL_IDLE_MS);
      handle(conn).catch(() => {}).finally(() => {
        clearTimeout(idle);
        open--;
        close();
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
