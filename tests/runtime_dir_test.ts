// The client's rule for a runtime directory that was there before it started
// (lib/runtime/runtime_dir.ts): only a client's own leftover is used, anything else is named.

import assert from "node:assert/strict";
import { type DirFacts, dirFacts, foreignDirReason } from "../lib/runtime/runtime_dir.ts";

const GID = 995;
/** A client's leftover: root's, the worker's group, 0730, its stale control socket. */
const LEFTOVER: DirFacts = {
  isSymlink: false,
  isDirectory: true,
  uid: 0,
  gid: GID,
  mode: 0o40730,
  entries: [{ name: "client.sock", kind: "socket" }],
};

Deno.test("runtime dir: a client's leftover is its own, today's or an older build's", () => {
  assert.equal(foreignDirReason(LEFTOVER, GID), null);
  assert.equal(foreignDirReason({ ...LEFTOVER, entries: [] }, GID), null);
  const older: DirFacts = {
    ...LEFTOVER,
    mode: 0o770,
    entries: [{ name: "client.lock", kind: "file" }, { name: "client.sock", kind: "socket" }],
  };
  assert.equal(foreignDirReason(older, GID), null);
});

Deno.test("runtime dir: anything else is refused with its reason", () => {
  const cases: [Partial<DirFacts>, RegExp][] = [
    [{ isSymlink: true }, /symbolic link/],
    [{ isDirectory: false }, /not a directory/],
    [{ uid: 1000 }, /owner is uid 1000, not root/],
    [{ gid: 0 }, /group is gid 0, not the worker's \(995\)/],
    [{ mode: 0o40755 }, /mode is 0755, not 0730/],
    [{ mode: 0o41730 }, /mode is 01730/],
    [{ entries: [{ name: "client.sock", kind: "file" }] }, /no client put there \(client\.sock\)/],
    [{ entries: [{ name: "client.lock", kind: "directory" }] }, /\(client\.lock\)/],
    [
      { entries: ["a", "b", "c", "d"].map((name) => ({ name, kind: "file" as const })) },
      /\(a, b, c, \.\.\.\)/,
    ],
  ];
  for (const [change, reason] of cases) {
    const got = foreignDirReason({ ...LEFTOVER, ...change }, GID);
    assert.ok(got !== null && reason.test(got), `${JSON.stringify(change)}: ${got}`);
  }
});

Deno.test("runtime dir: dirFacts reads the directory and does not follow a link", () => {
  const dir = Deno.makeTempDirSync({ prefix: "pqts-rundir-" });
  try {
    Deno.writeTextFileSync(`${dir}/notes`, "");
    Deno.mkdirSync(`${dir}/sub`);
    Deno.symlinkSync(dir, `${dir}/sub/link`);
    const facts = dirFacts(dir);
    assert.ok(facts.isDirectory && !facts.isSymlink);
    assert.equal(facts.uid, Deno.uid());
    assert.deepEqual(
      facts.entries.sort((a, b) => a.name.localeCompare(b.name)),
      [{ name: "notes", kind: "file" }, { name: "sub", kind: "directory" }],
    );
    const link = dirFacts(`${dir}/sub/link`);
    assert.ok(link.isSymlink && !link.isDirectory);
    assert.deepEqual(link.entries, []);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
