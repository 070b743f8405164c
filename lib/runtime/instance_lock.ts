// One client per runtime directory, for the client's whole life: an exclusive flock(2) on a
// lock file there. The firewall rules tell a running client only once it has installed its rule,
// about a second after it starts; two clients started together would both find none and both
// run. The lock closes that gap: taken before the rules are looked at, held until the process
// ends. A flock belongs to the open file, so the kernel drops it when the process dies, SIGKILL
// included, and the file (opened close-on-exec) is not inherited by the worker.
//
// At exit the holder unlinks the file before it lets the lock go, so no empty directory or stale
// file stays behind. A client that opened the old file just before may then get its lock: it sees
// the file has no name any more (link count 0) and starts again on a fresh one, so two clients
// never hold locks on two different files of the same path.

const ATTEMPTS = 5;

export class InstanceLock {
  private constructor(readonly path: string, private file: Deno.FsFile | null) {}

  /**
   * Takes the exclusive lock on `path` (creating it and its directory when missing), or returns
   * null at once when another process holds it.
   */
  static take(path: string): InstanceLock | null {
    const dir = path.slice(0, path.lastIndexOf("/")) || "/";
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      let file: Deno.FsFile;
      try {
        Deno.mkdirSync(dir, { recursive: true, mode: 0o750 });
        file = Deno.openSync(path, { write: true, create: true, mode: 0o600 });
      } catch (e) {
        // An exiting holder removed the directory between our mkdir and open.
        if (e instanceof Deno.errors.NotFound) continue;
        throw e;
      }
      let locked = false;
      try {
        locked = file.tryLockSync(true);
        // nlink is null only on platforms without link counts; Linux has them.
        if (locked && (file.statSync().nlink ?? 1) > 0) return new InstanceLock(path, file);
      } catch (e) {
        file.close();
        throw e;
      }
      file.close();
      if (!locked) return null;
      // Locked a file its holder unlinked on the way out: the path has a new one, or none.
    }
    throw new Error(`cannot lock ${path}: the file kept being replaced`);
  }

  /** Removes the file, then lets the lock go (in that order: see above). Idempotent. */
  release(): void {
    if (this.file === null) return;
    try {
      Deno.removeSync(this.path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    } finally {
      this.file.close();
      this.file = null;
    }
  }
}
