// Shared by tests/ffi_*_test.ts: root detection, throw-away network namespaces and running a
// helper script inside one with a narrowed FFI permission.

import { LIBC_CANDIDATES } from "../../ffi/libc.ts";

export const isRoot = Deno.uid() === 0;

/** Says (once per file) why root-only tests are skipped; returns the `ignore` flag. */
export function rootOnly(file: string): boolean {
  if (!isRoot) console.log(`${file}: skipping root-only tests: not running as root`);
  return !isRoot;
}

/** The C library path the helpers get --allow-ffi for (the first candidate present). */
export function libcPath(): string {
  for (const p of LIBC_CANDIDATES) {
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch {
      // try the next one
    }
  }
  throw new Error("no C library found among LIBC_CANDIDATES");
}

export const REPO = new URL("../../", import.meta.url).pathname;
export const HELPERS = new URL("./", import.meta.url).pathname;

export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

export async function run(cmd: string, args: string[]): Promise<Output> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Creates namespace `name` afresh (removing a leftover from an earlier run), loopback up. */
export async function resetNetns(name: string): Promise<void> {
  await deleteNetns(name);
  const add = await run("ip", ["netns", "add", name]);
  if (add.code !== 0) throw new Error(`ip netns add ${name}: ${add.stderr}`);
  const lo = await run("ip", ["-n", name, "link", "set", "lo", "up"]);
  if (lo.code !== 0) throw new Error(`ip -n ${name} link set lo up: ${lo.stderr}`);
}

export async function deleteNetns(name: string): Promise<void> {
  await run("ip", ["netns", "del", name]); // absent is fine
}

/**
 * Runs tests/helpers/`script` with `deno run`, inside namespace `netns` when given, and parses
 * the last stdout line as JSON. `perms` are extra permission flags; FFI is always narrowed to
 * the C library unless `perms` includes --allow-all.
 */
export async function runHelper<T>(
  netns: string | null,
  script: string,
  args: string[] = [],
  perms: string[] = [],
): Promise<{ result: T; output: Output }> {
  const flags = perms.includes("--allow-all") ? perms : [`--allow-ffi=${libcPath()}`, ...perms];
  const denoArgs = ["run", "--quiet", ...flags, HELPERS + script, ...args];
  const output = netns === null
    ? await run(Deno.execPath(), denoArgs)
    : await run("ip", ["netns", "exec", netns, Deno.execPath(), ...denoArgs]);
  const last = output.stdout.trim().split("\n").at(-1) ?? "";
  let result: T;
  try {
    result = JSON.parse(last) as T;
  } catch {
    throw new Error(
      `${script} exited ${output.code} without a JSON result\nstdout: ${output.stdout}\nstderr: ${output.stderr}`,
    );
  }
  return { result, output };
}
