// doc/architecture.md names the functions a packet and a DNS answer pass through. Every step of
// those lists names a file and one or more functions (`Class.member` or `function`); each must be
// defined in that file, so the paths cannot silently go stale when code moves or is renamed.

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const doc = Deno.readTextFileSync(new URL("doc/architecture.md", ROOT));

/** The numbered steps between the paths markers: a file and the names after it. */
function steps(): { line: string; file: string; names: string[] }[] {
  const from = doc.indexOf("<!-- paths -->");
  const to = doc.indexOf("<!-- end of paths -->");
  assert.ok(from >= 0 && to > from, "the packet paths are marked in doc/architecture.md");
  const out = [];
  for (const line of doc.slice(from, to).split("\n")) {
    const m = /^\d+\. `([\w/.]+\.ts)` (.*)$/.exec(line);
    if (!m) continue;
    // The names are the code spans before the step's colon (after it: prose).
    const head = m[2].split(/`:/)[0];
    const names = [...head.matchAll(/`([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)?)`?/g)].map((n) =>
      n[1]
    );
    out.push({ line, file: m[1], names });
  }
  return out;
}

/** Whether `source` defines `name`: a class member, a function, a class or a const. */
function defines(source: string, name: string): boolean {
  const [owner, member] = name.includes(".") ? name.split(".") : [null, name];
  if (owner !== null && !new RegExp(`\\bclass ${owner}\\b`).test(source)) return false;
  const patterns = owner === null
    ? [
      new RegExp(`\\bfunction\\*?\\s+${member}\\s*[<(]`),
      new RegExp(`\\b(?:const|class)\\s+${member}\\b`),
    ]
    : [
      new RegExp(
        `^\\s*(?:(?:private|protected|public|static|async|readonly|override|get)\\s+)*\\*?` +
          `${member}\\s*[<(]`,
        "m",
      ),
    ];
  return patterns.some((p) => p.test(source));
}

Deno.test("architecture: the packet and DNS paths list at least the three journeys", () => {
  const all = steps();
  assert.ok(all.length >= 30, `only ${all.length} steps found`);
  for (const s of all) assert.ok(s.names.length > 0, `no function named in: ${s.line}`);
});

Deno.test("architecture: every function on the paths exists in the file named", () => {
  const missing: string[] = [];
  for (const s of steps()) {
    const source = Deno.readTextFileSync(new URL(s.file, ROOT));
    for (const name of s.names) if (!defines(source, name)) missing.push(`${s.file} ${name}`);
  }
  assert.deepEqual(missing, []);
});

Deno.test("architecture: the test notices a name that does not exist", () => {
  const source = Deno.readTextFileSync(new URL("lib/core/data_path.ts", ROOT));
  assert.ok(defines(source, "DataPath.fromTun"));
  assert.ok(!defines(source, "DataPath.noSuchStep"));
  assert.ok(!defines(source, "NoSuchClass.fromTun"));
});
