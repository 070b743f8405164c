// ffi/spawn.ts: descriptors handed to real children at fixed numbers, SOCK_SEQPACKET messages
// both ways, exit statuses and signals. The whole privilege-separation flow, in a throw-away
// network namespace, is tests/ffi_spawn_ns_test.ts, in the root-only run.

import assert from "node:assert/strict";
import {
  closeFd,
  killChild,
  MAX_MESSAGE,
  SeqPacketChannel,
  socketPair,
  spawnWithFds,
  tryWaitChild,
  waitChild,
} from "../ffi/spawn.ts";
import { SysError } from "../ffi/libc.ts";
import { HELPERS, libcPath } from "./helpers/ffi_netns.ts";
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Kills and reaps a child a failed test left running; nothing if it was reaped already. */
function cleanUp(pid: number): void {
  try {
    if (tryWaitChild(pid) === null) {
      killChild(pid, 9);
      while (tryWaitChild(pid) === null) { /* SIGKILL is quick */ }
    }
  } catch (e) {
    if (!(e instanceof SysError && e.code === 10)) throw e; // ECHILD: already reaped
  }
}

function baseEnv(): Record<string, string> {
  return { PATH: "/usr/bin:/bin", HOME: Deno.env.get("HOME") ?? "/", NO_COLOR: "1" };
}

Deno.test("a deno child gets two channels at fds 3 and 4 (crossed) and talks on both", async () => {
  const [a1, b1] = socketPair();
  const [a2, b2] = socketPair();
  // Crossed on purpose: b2 becomes 3 and b1 becomes 4, whatever numbers they had.
  const pid = spawnWithFds(
    Deno.execPath(),
    [
      "deno",
      "run",
      "--quiet",
      `--allow-ffi=${libcPath()}`,
      "--allow-env=PQTS_TEST",
      HELPERS + "ffi_spawn_child.ts",
      "an argument with spaces",
      "ünïcødé",
    ],
    { ...baseEnv(), PQTS_TEST: "value=with=equals" },
    [[b2, 3], [b1, 4]],
  );
  closeFd(b1);
  closeFd(b2);
  const on3 = new SeqPacketChannel(a2);
  const on4 = new SeqPacketChannel(a1);
  try {
    await on3.send(enc.encode("hello child"));
    const hello = JSON.parse(dec.decode((await on3.recv(10_000))!));
    assert.deepEqual(hello.args, ["an argument with spaces", "ünïcødé"]);
    assert.equal(hello.env, "value=with=equals");
    assert.equal(hello.first, "hello child");
    assert.equal(hello.pid, pid);
    assert.equal(dec.decode((await on4.recv(10_000))!), "hello on 4");

    // Message boundaries survive, up to the 64 KiB limit.
    const big = new Uint8Array(MAX_MESSAGE).map((_, i) => i * 7);
    const small = enc.encode("x");
    await on3.send(big);
    await on3.send(small);
    assert.deepEqual(await on3.recv(10_000), big);
    assert.deepEqual(await on3.recv(10_000), small);
    assert.throws(() => on3.trySend(new Uint8Array(MAX_MESSAGE + 1)), RangeError);
    assert.throws(() => on3.trySend(new Uint8Array(0)), RangeError);

    on3.close(); // the child sees end-of-file and exits 0
    assert.deepEqual(await waitChild(pid, 10_000), { pid, code: 0, signal: null });
    assert.equal(await on4.recv(1000), null, "end-of-file once the child is gone");
    await assert.rejects(on4.send(small), (e: unknown) => e instanceof SysError && e.code === 32);
  } finally {
    on3.close();
    on4.close();
    cleanUp(pid);
  }
});

Deno.test("a shell child: fd 1 mapped to a socket, only mapped descriptors, clean signals", async () => {
  const [mine, theirs] = socketPair();
  const [spare, spare2] = socketPair(); // close-on-exec: must not reach the child
  const script = "ls /proc/$$/fd; grep -E '^Sig(Ign|Blk)' /proc/self/status; exit 7";
  const pid = spawnWithFds("/bin/sh", ["sh", "-c", script], baseEnv(), [[theirs, 1]]);
  closeFd(theirs);
  const channel = new SeqPacketChannel(mine);
  let text = "";
  try {
    for (;;) {
      const m = await channel.recv(10_000);
      if (m === null) break;
      text += dec.decode(m);
    }
    assert.deepEqual(await waitChild(pid, 10_000), { pid, code: 7, signal: null });
  } finally {
    channel.close();
    closeFd(spare);
    closeFd(spare2);
  }
  const fds = text.split(/\s+/).filter((w) => /^\d+$/.test(w)).map(Number);
  assert.ok(fds.includes(1));
  assert.ok(!fds.includes(mine) && !fds.includes(spare) && !fds.includes(spare2), text);
  assert.match(text, /SigBlk:\s*0000000000000000/, `no signal blocked in the child:\n${text}`);
  const ign = BigInt("0x" + /SigIgn:\s*([0-9a-f]+)/.exec(text)![1]);
  assert.equal(ign & (1n << 12n), 0n, "SIGPIPE back at its default action");
});

Deno.test("waitChild times out, then reports the signal that ended the child", async () => {
  const pid = spawnWithFds("/bin/sleep", ["sleep", "30"], baseEnv(), []);
  try {
    assert.equal(tryWaitChild(pid), null);
    assert.equal(await waitChild(pid, 50), null);
    killChild(pid, 15);
    assert.deepEqual(await waitChild(pid, 10_000), { pid, code: null, signal: 15 });
  } finally {
    cleanUp(pid);
  }
  assert.throws(() => tryWaitChild(pid), (e: unknown) => e instanceof SysError && e.code === 10);
});

Deno.test("spawn errors are SysErrors with the reason", () => {
  assert.throws(
    () => spawnWithFds("/nonexistent/program", ["x"], {}, []),
    (e: unknown) => e instanceof SysError && e.code === 2 && /posix_spawn/.test(e.message),
  );
  assert.throws(() => spawnWithFds("/bin/true", ["true"], {}, [[1, 3], [2, 3]]), RangeError);
  assert.throws(() => spawnWithFds("/bin/true", ["a\0b"], {}, []), RangeError);
  // A source descriptor that is not open fails in the child, and posix_spawn reports it.
  assert.throws(
    () => spawnWithFds("/bin/true", ["true"], {}, [[987, 3]]),
    (e: unknown) => e instanceof SysError && e.code === 9,
  );
});
