// One client per runtime directory, for the client's whole life: an exclusive flock(2) on the
// directory itself. The firewall rules tell a running client only once it has installed its rule,
// about a second after it starts; two clients started together would both find none and both
// run. The lock closes that gap: taken before the rules are looked at, held until the process
// ends. A flock belongs to the open file, so the kernel drops it when the process dies, SIGKILL
// included, and the descriptor (opened close-on-exec) is not inherited by the worker.
//
// Why the directory and not a file in it: the worker's group may write to the directory (it
// serves the control socket there), so it could unlink a lock file and let a second client take
// a lock on a new one. The directory itself it can neither remove nor rename (that needs write
// permission on the parent, root's), and without read permission (the supervisor gives the group
// only write and search: RUNTIME_DIR_MODE) it cannot open it to hold the lock itself either.
//
// At exit the holder removes the directory (when it is empty) before it lets the lock go, so no
// empty directory stays behind. A client that opened the old directory just before may then get
// its lock: it sees the directory has no name any more (link count 0) and starts again on a fresh
// one, so two clients never hold locks on two different directories of the same path.

const ATTEMPTS = 5;

/** The runtime directory's mode: root may do anything; the worker's group may create, reach and
 * remove its control socket there (write, search) but not open the directory (no read). */
export const RUNTIME_DIR_MODE = 0o730;

export class InstanceLock {
  private constructor(
    readonly dir: string,
    private handle: Deno.FsFile | null,
    /** Whether this take made the directory; else it existed (whose, the holder must judge). */
    readonly made: boolean,
  ) {}

  /**
   * Takes the exclusive lock on directory `dir` (creating it, mode 0750, when missing), or
   * returns null at once when another process holds it.
   */
  static take(dir: string): InstanceLock | null {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      let handle: Deno.FsFile;
      let made: boolean;
      try {
        made = makeDirectory(dir);
        handle = Deno.openSync(dir, { read: true });
      } catch (e) {
        // An exiting holder removed the directory between our mkdir and open.
        if (e instanceof Deno.errors.NotFound) continue;
        throw e;
      }
      let locked = false;
      try {
        if (!handle.statSync().isDirectory) throw new Error(`${dir} is not a directory`);
        locked = handle.tryLockSync(true);
        // nlink is null only on platforms without link counts; Linux has them.
        if (locked && (handle.statSync().nlink ?? 1) > 0) {
          return new InstanceLock(dir, handle, made);
        }
      } catch (e) {
        handle.close();
        throw e;
      }
      handle.close();
      if (!locked) return null;
      // Locked a directory its holder removed on the way out: the path has a new one, or none.
    }
    throw new Error(`cannot lock ${dir}: the directory kept being replaced`);
  }

  /**
   * Removes the directory when it is empty (files others put there keep it), then lets the lock
   * go (in that order: see above). Idempotent.
   */
  release(): void {
    if (this.handle === null) return;
    try {
      Deno.removeSync(this.dir);
    } catch {
      /* not empty, or already gone */
    } finally {
      this.leave();
    }
  }

  /** Lets the lock go and leaves the directory as it is: one the holder refused to use. */
  leave(): void {
    this.handle?.close();
    this.handle = null;
  }
}

/**
 * Makes `dir` (mode 0750, its missing parents too) and says whether this call made it: false
 * when something already had that name.
 */
function makeDirectory(dir: string): boolean {
  try {
    Deno.mkdirSync(dir, { mode: 0o750 });
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.AlreadyExists) return false;
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  // A parent is missing. Made recursively, `dir` cannot have been there a moment ago; another
  // client making it meanwhile is refused by, or refuses, the lock that follows.
  Deno.mkdirSync(dir, { recursive: true, mode: 0o750 });
  return true;
}
