// The client's instance lock (lib/runtime/instance_lock.ts), a flock on the runtime directory:
// one holder per directory, refused at once while held, gone with its holder's process (SIGKILL
// included), the directory removed at release when empty; and, as root, that the worker's group
// can use the directory for its socket but can neither remove, rename nor lock it.

import assert from "node:assert/strict";
import { InstanceLock, RUNTIME_DIR_MODE } from "../lib/runtime/instance_lock.ts";
import { rootOnly } from "./helpers/ffi_netns.ts";

const MODULE = new URL("../lib/runtime/instance_lock.ts", import.meta.url).href;

Deno.test("one holder at a time; release removes the empty directory and frees the path", async () => {
  const parent = await Deno.makeTempDir({ prefix: "pqts-lock-" });
  try {
    const dir = `${parent}/run/pqconnect-ts`; // made when missing, its parents too
    const first = InstanceLock.take(dir);
    assert.ok(first, "the first take wins");
    assert.ok(Deno.statSync(dir).isDirectory);
    assert.equal(InstanceLock.take(dir), null, "a second take is refused while it is held");
    first.release();
    first.release(); // idempotent
    await assert.rejects(Deno.stat(dir), Deno.errors.NotFound);
    const second = InstanceLock.take(dir);
    assert.ok(second, "free again after the release");
    // What others left there keeps the directory; the lock goes all the same.
    Deno.writeTextFileSync(`${dir}/left`, "");
    second.release();
    assert.ok(Deno.statSync(`${dir}/left`).isFile);
    const third = InstanceLock.take(dir);
    assert.ok(third, "a directory that stayed is free again");
    third.release();
    assert.throws(() => InstanceLock.take(`${dir}/left`), "a file is not a lockable directory");
    assert.ok(first.made && second.made, "each made the directory it took");
    assert.equal(third.made, false, "the third found it there");
    // Left, not released: a directory the holder refused stays as it was, and is free again.
    const fourth = InstanceLock.take(dir);
    assert.ok(fourth && !fourth.made);
    Deno.removeSync(`${dir}/left`);
    fourth.leave();
    assert.ok(Deno.statSync(dir).isDirectory, "leave keeps even an empty directory");
    const fifth = InstanceLock.take(dir);
    assert.ok(fifth, "free again after leave");
    fifth.release();
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test("a SIGKILLed holder's lock dies with it; its directory does not block the next", async () => {
  const parent = await Deno.makeTempDir({ prefix: "pqts-lock-" });
  const dir = `${parent}/run`;
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { InstanceLock } from ${JSON.stringify(MODULE)};\n` +
      `if (!InstanceLock.take(${JSON.stringify(dir)})) Deno.exit(3);\n` +
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
    assert.equal(InstanceLock.take(dir), null, "held by the other process");
    holder.kill("SIGKILL");
    assert.equal((await holder.status).signal, "SIGKILL");
    assert.ok(Deno.statSync(dir).isDirectory, "a killed holder cannot remove its directory");
    const next = InstanceLock.take(dir);
    assert.ok(next, "the kernel let the lock go with the process");
    next.release();
  } finally {
    try {
      holder.kill("SIGKILL");
    } catch { /* already gone */ }
    await holder.stdout.cancel().catch(() => {});
    await Deno.remove(parent, { recursive: true });
  }
});

/** What a process of the worker's group tries on the locked runtime directory (argv[1]). */
const WORKER_TRIES = `
import fcntl, json, os, socket, sys
d = sys.argv[1]
def attempt(f):
    try:
        f()
        return "done"
    except OSError as e:
        return e.errno
def lock(flags):
    fd = os.open(d, flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
def serve():
    s = socket.socket(socket.AF_UNIX)
    s.bind(d + "/client.sock")
    os.chmod(d + "/client.sock", 0o660)
    s.close()
    os.unlink(d + "/client.sock")
print(json.dumps({
    "socket": attempt(serve),
    "lockRead": attempt(lambda: lock(os.O_RDONLY)),
    "lockPath": attempt(lambda: lock(os.O_PATH)),
    "remove": attempt(lambda: os.rmdir(d)),
    "rename": attempt(lambda: os.rename(d, d + "-moved")),
}))
`;

Deno.test({
  name:
    "the worker's group serves its socket there but cannot remove, rename or lock the directory",
  ignore: rootOnly("instance_lock_test (the worker's group)"),
  async fn() {
    // Laid out as the supervisor does: a root-owned parent, the directory root's with the
    // group of the user the worker runs as (nobody here), RUNTIME_DIR_MODE.
    const parent = await Deno.makeTempDir({ prefix: "pqts-lock-" });
    const dir = `${parent}/run`;
    const lock = InstanceLock.take(dir);
    try {
      assert.ok(lock);
      await Deno.chmod(parent, 0o755);
      await Deno.chown(dir, 0, 65534);
      await Deno.chmod(dir, RUNTIME_DIR_MODE);
      const out = await new Deno.Command("setpriv", {
        args: ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"]
          .concat([WORKER_TRIES, dir]),
        stdout: "piped",
        stderr: "piped",
      }).output();
      const said = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      assert.deepEqual(JSON.parse(said), {
        socket: "done", // the control socket: made, chmodded and removed by the worker
        lockRead: 13, // EACCES: no read permission, so no descriptor to lock
        lockPath: 9, // EBADF: an O_PATH descriptor cannot be locked
        remove: 13, // EACCES: the parent is root's
        rename: 13,
      });
      assert.equal(InstanceLock.take(dir), null, "still held");
    } finally {
      lock?.release();
      await Deno.remove(parent, { recursive: true });
    }
  },
});
