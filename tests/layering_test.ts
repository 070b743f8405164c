// The layers stay what doc/architecture.md says they are. The protocol core (lib/core/) and the
// sans-IO device logic take bytes, time and randomness as arguments: no FFI, no Deno IO, no
// Workers, no timers, no clock, no randomness of their own. ffi/ sits at the bottom and imports
// nothing from the layers above it.

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

/** Sans-IO files outside lib/core/: the devices' decision logic. */
const SANS_IO_FILES = [
  "lib/server/device.ts",
  "lib/client/keyfetch.ts",
  "lib/client/connection.ts",
  "lib/client/device.ts",
  "lib/client/dns_relay.ts",
  "lib/server/ephemeral_keys.ts",
  "lib/check/dns.ts",
  "lib/check/probe.ts",
  "lib/check/report.ts",
  "lib/check/verdicts.ts",
];

const FORBIDDEN_IN_SANS_IO: [RegExp, string][] = [
  [/from\s+"[^"]*\/ffi\//, "imports ffi/"],
  [/from\s+"[^"]*\/wasm\//, "imports wasm/"],
  [/from\s+"[^"]*\/runtime\//, "imports the runtime layer"],
  [/from\s+"node:(fs|net|dgram|child_process|worker_threads|os|process)/, "imports Node IO"],
  [/\bDeno\.(?!test\b)/, "uses Deno.* IO"],
  [/\bnew\s+Worker\b/, "starts a Worker"],
  [/\b(setTimeout|setInterval|queueMicrotask)\s*\(/, "uses a timer"],
  [/\b(performance\.now|Date\.now)\s*\(/, "reads the clock"],
  [/\bnew\s+Date\s*\(\s*\)/, "reads the clock"],
  [/\bcrypto\.getRandomValues\b/, "draws its own randomness"],
  [/\bconsole\./, "writes to the console"],
];

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(new URL(dir, ROOT))) {
    const path = `${dir}${e.name}`;
    if (e.isDirectory) out.push(...tsFiles(`${path}/`));
    else if (e.name.endsWith(".ts")) out.push(path);
  }
  return out.sort();
}

/** Source without comments, so a comment that names a forbidden thing does not count. */
function code(path: string): string {
  const text = Deno.readTextFileSync(new URL(path, ROOT));
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:"'`])\/\/.*$/gm, "$1");
}

function violations(paths: string[], rules: [RegExp, string][]): string[] {
  const found: string[] = [];
  for (const path of paths) {
    const source = code(path);
    for (const [pattern, what] of rules) {
      if (pattern.test(source)) found.push(`${path} ${what}`);
    }
  }
  return found;
}

Deno.test("lib/core/ and the devices' logic are sans-IO", () => {
  const core = tsFiles("lib/core/");
  assert.ok(core.length > 10, "the core folder was found");
  assert.deepEqual(violations([...core, ...SANS_IO_FILES], FORBIDDEN_IN_SANS_IO), []);
});

Deno.test("lib/core/ imports nothing outside itself but npm packages", () => {
  const outside = violations(tsFiles("lib/core/"), [[/from\s+"\.\.\//, "imports outside core"]]);
  assert.deepEqual(outside, []);
});

Deno.test("ffi/ imports nothing from the layers above it", () => {
  const ffi = tsFiles("ffi/");
  assert.ok(ffi.length > 5, "the ffi folder was found");
  assert.deepEqual(violations(ffi, [[/from\s+"\.\.\//, "imports from above ffi/"]]), []);
});
