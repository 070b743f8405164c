// The client's instance lock (lib/runtime/instance_lock.ts): one holder per path, refused at once
// while held, gone with its holder's process (SIGKILL included), and the file removed at release.

import assert from "node:assert/strict";
import { InstanceLock } from "../lib/runtime/instance_lock.ts";

const MODULE = new URL("../lib/runtime/instance_lock.ts", import.meta.url).href;

Deno.test("one holder at a time; release removes the file and frees the path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pqts-lock-" });
  try {
    const path = `${dir}/run/client.lock`; // the directory is made when missing
    const first = InstanceLock.take(path);
    assert.ok(first, "the first take wins");
    assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
    assert.equal(InstanceLock.take(path), null, "a second take is refused while it is held");
    first.release();
    first.release(); // idempotent
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
    const second = InstanceLock.take(path);
    assert.ok(second, "free again after the release");
    second.release();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a SIGKILLed holder's lock dies with it; its file does not block the next", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pqts-lock-" });
  const path = `${dir}/client.lock`;
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { InstanceLock } from ${JSON.stringify(MODULE)};\n` +
      `if (!InstanceLock.take(${JSON.stringify(path)})) Deno.exit(3);\n` +
      `console.log("held");\nsetTimeout(() => {}, 60_000);`,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = holder.stdout.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    assert.match(new TextDecoder().decode(value), /held/);
    assert.equal(InstanceLock.take(path), null, "held by the other process");
    holder.kill("SIGKILL");
    assert.equal((await holder.status).signal, "SIGKILL");
    assert.ok(Deno.statSync(path).isFile, "a killed holder cannot remove its file");
    const next = InstanceLock.take(path);
    assert.ok(next, "the kernel let the lock go with the process");
    next.release();
  } finally {
    try {
      holder.kill("SIGKILL");
    } catch { /* already gone */ }
    await holder.stdout.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});
