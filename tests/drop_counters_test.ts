import assert from "node:assert/strict";
import { DropCounters, type Logger } from "../lib/core/log.ts";

function recorder(): Logger & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    error: (m) => lines.push(m),
    warn: (m) => lines.push(m),
    info: (m) => lines.push(m),
    debug: () => {},
    debugEnabled: false,
  };
}

Deno.test("DropCounters: a total counted elsewhere (the kernel's) is reported by its growth", () => {
  const drops = new DropCounters();
  const log = recorder();
  drops.count("short");
  drops.setTotal("initiation-shed-by-kernel", 500);
  drops.report(log);
  assert.deepEqual(log.lines, [
    "dropped: short +1 (1 in all), initiation-shed-by-kernel +500 (500 in all)",
  ]);
  // A total that stands still or goes down (a socket replaced) says nothing new.
  drops.setTotal("initiation-shed-by-kernel", 500);
  drops.setTotal("initiation-shed-by-kernel", 20);
  drops.report(log);
  assert.equal(log.lines.length, 1);
  drops.setTotal("initiation-shed-by-kernel", 740);
  drops.report(log);
  assert.equal(log.lines[1], "dropped: initiation-shed-by-kernel +240 (740 in all)");
  assert.equal(drops.get("initiation-shed-by-kernel"), 740);
});
