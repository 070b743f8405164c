// The reference's command-line spellings do what our own flags do, so a machine that switches
// implementation keeps its systemd units and scripts: --interface-name, -vv/--very-verbose,
// the client's --show and -H/--host-ip, and --version on the top level and on every command.

import assert from "node:assert/strict";
import { parseClientArgs } from "../lib/cli/client.ts";
import { parseServerArgs } from "../lib/cli/server.ts";
import { VERSION } from "../lib/cli/version.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function pqconnect(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--allow-read", "--allow-net", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Each alias gives exactly what its native flag gives, and something else than the default. */
function sameEffect<T>(parse: (a: string[]) => T, native: string[], aliases: string[][]): void {
  const want = parse(native);
  assert.notDeepEqual(want, parse([]), `${native.join(" ")} changes nothing`);
  for (const alias of aliases) assert.deepEqual(parse(alias), want, alias.join(" "));
}

Deno.test("client: reference spellings parse to the same options as ours", () => {
  sameEffect(parseClientArgs, ["-i", "pqcalias0"], [
    ["--interface-name", "pqcalias0"],
    ["--interface-name=pqcalias0"],
    ["--interface", "pqcalias0", "--interface-name", "pqcalias0"],
  ]);
  sameEffect(parseClientArgs, ["--verbose"], [["-v"], ["-vv"], ["--very-verbose"]]);
  sameEffect(parseClientArgs, ["--host-ip", "198.18.0.9"], [["-H", "198.18.0.9"]]);
  const host = parseClientArgs(["-H", "198.18.0.9"]);
  assert.ok(host.kind === "run" && host.options.hostAddress === "198.18.0.9");
  assert.deepEqual(parseClientArgs(["--show"]), { kind: "show", runtimeDir: "/run/pqconnect-ts" });
  assert.deepEqual(parseClientArgs(["--show", "--runtime-dir", "/tmp/x"]), {
    kind: "show",
    runtimeDir: "/tmp/x",
  });
  assert.throws(() => parseClientArgs(["-i", "a0", "--interface-name", "b0"]), /different/);
  assert.throws(() => parseClientArgs(["-H", "300.0.0.1"]), /--host-ip must be an IPv4/);
});

Deno.test("server: reference spellings parse to the same options as ours", () => {
  sameEffect(parseServerArgs, ["--interface", "pqcsalias0"], [
    ["-i", "pqcsalias0"],
    ["--interface-name", "pqcsalias0"],
  ]);
  sameEffect(parseServerArgs, ["--verbose"], [["-v"], ["-vv"], ["--very-verbose"]]);
  sameEffect(parseServerArgs, ["--host-ip", "198.18.0.1"], [["-H", "198.18.0.1"]]);
});

Deno.test("--version on the top level and on every command; --show is status", async () => {
  const line =
    `pqconnect-ts version ${VERSION} (PQConnect protocol pq1, compatible with PQConnect 1.2.x)\n`;
  for (
    const args of [
      ["--version"],
      ["client", "--version"],
      ["server", "--version"],
      ["keygen", "--version"],
      ["announce", "--version"],
      ["status", "--version"],
      ["check", "--version"],
    ]
  ) {
    const r = await pqconnect(...args);
    assert.equal(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stdout, line, args.join(" "));
  }
  // No client runs at this runtime directory: --show and status say so in the same words.
  const dir = await Deno.makeTempDir({ prefix: "pqts-alias-" });
  try {
    const show = await pqconnect("client", "--show", "--runtime-dir", dir);
    const status = await pqconnect("status", "--runtime-dir", dir);
    assert.equal(status.code, 1, status.stderr);
    assert.match(status.stderr, /no running client answers at/);
    assert.equal(show.code, status.code);
    assert.equal(show.stderr.replace("pqconnect client:", "pqconnect status:"), status.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
