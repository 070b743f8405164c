import assert from "node:assert/strict";
import { DropCounters, LineBudget, type Logger } from "../lib/core/log.ts";

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

Deno.test("line budget: so many lines a second, the rest summed by reason", () => {
  const b = new LineBudget(2);
  assert.deepEqual([b.take(10.1, "a"), b.take(10.5, "a"), b.take(10.9, "a"), b.take(10.9, "b")], [
    true,
    true,
    false,
    false,
  ]);
  assert.deepEqual(b.summary(), { total: 2, byReason: "a: 1, b: 1" });
  assert.deepEqual(b.summary(), { total: 0, byReason: "" }, "a summary empties it");
  assert.equal(b.take(11.0, "a"), true, "a new second, a new budget");
});
