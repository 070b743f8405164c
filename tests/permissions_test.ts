// The permission flags have one source, lib/runtime/permissions.ts: the deno.json tasks, the
// launcher ./pqconnect and doc/permissions.md must say exactly what scripts/permissions.ts
// writes from it (`deno task permissions` rewrites them).

import assert from "node:assert/strict";
import { TARGETS } from "../scripts/permissions.ts";
import { commandFlags, DEFAULT_PLACES } from "../lib/runtime/permissions.ts";

const ROOT = new URL("../", import.meta.url);

for (const [file, render] of TARGETS) {
  Deno.test(`permissions: ${file} matches lib/runtime/permissions.ts`, () => {
    const text = Deno.readTextFileSync(new URL(file, ROOT));
    assert.equal(render(text), text, `${file} drifted: run deno task permissions`);
  });
}

Deno.test("permissions: each daemon task runs with the flags of its command", () => {
  const tasks = JSON.parse(Deno.readTextFileSync(new URL("deno.json", ROOT))).tasks;
  for (const command of ["server", "client"] as const) {
    const line: string = tasks[command].command;
    for (const flag of commandFlags(command, DEFAULT_PLACES)) {
      assert.ok(line.includes(` ${flag} `), `${command} task lacks ${flag}`);
    }
  }
  const launcher = Deno.readTextFileSync(new URL("pqconnect", ROOT));
  assert.match(launcher, /--allow-read="\$keydir,\$here"/, "launcher scopes the server's reads");
});
