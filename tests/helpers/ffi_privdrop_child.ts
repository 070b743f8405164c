// Run as root inside a test network namespace (see tests/ffi_privdrop_ns_test.ts): drops to
// `nobody` with ffi/privdrop.ts, then inspects every thread's credentials in /proc and what the
// process can still do. Prints a JSON report as its last line. Needs --allow-all only because
// Deno guards /proc reads with it.

import {
  currentCredentials,
  dropPrivileges,
  lookupUser,
  PrivilegeDropError,
} from "../../ffi/privdrop.ts";
import { openTun } from "../../ffi/tun.ts";
import { libc, SysError } from "../../ffi/libc.ts";

function threads() {
  const out: Array<Record<string, string>> = [];
  for (const entry of Deno.readDirSync("/proc/self/task")) {
    const status = Deno.readTextFileSync(`/proc/self/task/${entry.name}/status`);
    const fields: Record<string, string> = { tid: entry.name };
    for (const line of status.split("\n")) {
      const [key, value] = line.split(":\t");
      if (["Name", "Uid", "Gid", "Groups", "NoNewPrivs", "CapEff"].includes(key)) {
        fields[key] = value.trim();
      }
    }
    out.push(fields);
  }
  return out;
}

function errorOf(fn: () => unknown) {
  try {
    fn();
    return null;
  } catch (e) {
    return {
      type: (e as Error).name,
      code: e instanceof SysError ? e.code : null,
      message: (e as Error).message,
    };
  }
}

const user = lookupUser("nobody");
const before = threads();
const tunAsRoot = errorOf(() => libc().close(openTun("pqts%d").fd));

dropPrivileges(user.uid, user.gid);

const report = {
  user,
  threadsBefore: before.length,
  tunAsRoot,
  threads: threads(),
  creds: currentCredentials(),
  tunAfterDrop: errorOf(() => openTun("pqts%d")),
  setuid0: libc().setuid(0),
  setresuid0: libc().setresuid(0, 0, 0),
  dropAgain: errorOf(() => dropPrivileges(user.uid, user.gid)),
  dropAgainIsPrivilegeDropError: (() => {
    try {
      dropPrivileges(user.uid, user.gid);
      return false;
    } catch (e) {
      return e instanceof PrivilegeDropError;
    }
  })(),
};
console.log(JSON.stringify(report));
