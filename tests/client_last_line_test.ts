// The client supervisor's last line says what really happened (lib/client/supervisor.ts
// lastLine): what a client that ran removed, what a start that failed midway removed again, and
// that a refused start changed nothing. tests/start_errors_ns_test.ts sees them in real runs.

import assert from "node:assert/strict";
import { lastLine, type SetUp } from "../lib/client/supervisor.ts";

const ALL = new Set<SetUp>(["interface", "control socket", "queue rule"]);

Deno.test("client's last line: a client that ran names all it removed", () => {
  assert.equal(
    lastLine(true, ALL, false),
    "stopped; interface, queue rule and control socket removed",
  );
  assert.equal(
    lastLine(true, ALL, true),
    "stopped; interface, queue rule and control socket removed",
  );
});

Deno.test("client's last line: a start that failed midway names what it removed again", () => {
  // The worker did not start: only the interface had been made.
  assert.equal(
    lastLine(false, new Set(["interface"]), false),
    "not started; interface removed again",
  );
  // The rule could not be installed after the worker said READY.
  assert.equal(
    lastLine(false, new Set(["interface", "control socket"]), true),
    "not started; interface and control socket removed again",
  );
});

Deno.test("client's last line: a refused start changed nothing", () => {
  assert.equal(lastLine(false, new Set(), false), "not started; nothing was changed");
  // Leftover rules were removed (and said so) before the start failed: not "nothing changed".
  assert.equal(
    lastLine(false, new Set(), true),
    "not started; nothing set up (the leftover rules above stay removed)",
  );
});
