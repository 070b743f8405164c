// Writes the permission flags of lib/runtime/permissions.ts into the three places that spell
// them out: the deno.json tasks, the launcher ./pqconnect (its `case` block) and the generated
// block of doc/permissions.md. tests/permissions_test.ts fails when they drift from the source.
//
//   deno task permissions                  # rewrite the three files
//   deno run --allow-read=. scripts/permissions.ts --check   # exit 1 when one of them differs

import {
  commandFlags,
  compileFlags,
  DEFAULT_PLACES,
  PERMISSION_COMMANDS,
  type PermissionCommand,
  type Places,
  workerFlags,
} from "../lib/runtime/permissions.ts";
import { LIBC_PATHS, NETTLE_PATHS, SODIUM_PATHS } from "../lib/runtime/permissions.ts";

/** Files that a compiled binary must embed (doc/permissions.md, compile, says why). */
const COMPILE_INCLUDES = [
  "wasm/crypto_worker.ts",
  "node_modules/@oqs/liboqs-js/dist/classic-mceliece-6960119.deno.js",
  "node_modules/@oqs/liboqs-js/dist/sntrup761.deno.js",
];

/** The commands with a deno.json task of their own (`check` is the type check's task name). */
const TASK_COMMANDS: PermissionCommand[] = ["server", "client", "keygen", "announce", "status"];

/** The daemons must not look for Deno updates (a DNS lookup and a connection abroad). */
const NO_UPDATE_CHECK: PermissionCommand[] = ["server", "client"];

function taskCommand(command: PermissionCommand): string {
  const env = NO_UPDATE_CHECK.includes(command) ? "DENO_NO_UPDATE_CHECK=1 " : "";
  const flags = commandFlags(command, DEFAULT_PLACES).join(" ");
  return `${env}deno run --no-prompt ${flags} main.ts ${command}`;
}

function compileCommand(): string {
  const includes = COMPILE_INCLUDES.map((f) => `--include=${f}`).join(" ");
  return `deno compile --no-prompt ${compileFlags(DEFAULT_PLACES).join(" ")} ${includes} ` +
    "--output dist/pqconnect main.ts";
}

/** deno.json with the commands' tasks written from the source. */
export function renderDenoJson(text: string): string {
  const config = JSON.parse(text);
  for (const command of TASK_COMMANDS) {
    setTaskCommand(config.tasks, command, taskCommand(command));
  }
  setTaskCommand(config.tasks, "compile", compileCommand());
  return JSON.stringify(config, null, 2) + "\n";
}

function setTaskCommand(tasks: Record<string, unknown>, name: string, command: string): void {
  const task = tasks[name];
  if (task && typeof task === "object") (task as { command: string }).command = command;
  else tasks[name] = command;
}

const SHELL_BEGIN =
  "# --- permissions: written by scripts/permissions.ts from lib/runtime/permissions.ts";
const SHELL_END = "# --- end of permissions";

/** The launcher's flags for the directories chosen on its command line. */
const LAUNCHER_PLACES: Places = { keyDir: "$keydir", runtimeDir: "$runtime", code: "$here" };

/** Flags a command gets only when the key directory was given: `${keydir_given:+…}`. */
function whenKeyDirGiven(command: PermissionCommand, at: Places): string[] {
  const base = commandFlags(command, at);
  return commandFlags(command, { ...at, keyDirGiven: true }).filter((f) => !base.includes(f));
}

function shellWord(flag: string): string {
  const eq = flag.indexOf("=");
  return eq < 0 || !flag.includes("$") ? flag : `${flag.slice(0, eq + 1)}"${flag.slice(eq + 1)}"`;
}

export function renderLauncher(text: string): string {
  // cmd_flags: a command that runs with another's permissions (client --show is status).
  const lines = [SHELL_BEGIN, 'case "${cmd_flags:-$cmd}" in'];
  for (const command of PERMISSION_COMMANDS) {
    const flags = [
      ...commandFlags(command, LAUNCHER_PLACES).map(shellWord),
      ...whenKeyDirGiven(command, LAUNCHER_PLACES).map((f) => `\${keydir_given:+${shellWord(f)}}`),
    ];
    lines.push(`  ${command}) flags=(`);
    for (const f of flags) lines.push(`    ${f}`);
    lines.push("  ) ;;");
  }
  lines.push("  *) flags=() ;; # help and unknown commands need nothing", "esac", SHELL_END);
  return replaceBlock(text, SHELL_BEGIN, SHELL_END, lines.join("\n"), "pqconnect");
}

const DOC_BEGIN =
  "<!-- permissions: written by scripts/permissions.ts from lib/runtime/permissions.ts -->";
const DOC_END = "<!-- end of permissions -->";

export function renderDoc(text: string): string {
  const block: string[] = [DOC_BEGIN, "", "```sh"];
  const each = (title: string, head: string, flags: string[], tail: string) => {
    block.push(`# ${title}`, head + " \\");
    for (const f of flags) block.push(`  ${f} \\`);
    block.push(`  ${tail}`);
  };
  for (const command of PERMISSION_COMMANDS) {
    const env = NO_UPDATE_CHECK.includes(command) ? "DENO_NO_UPDATE_CHECK=1 " : "";
    const extra = whenKeyDirGiven(command, { ...DEFAULT_PLACES, keyDir: "KEYDIR" });
    if (extra.length > 0) block.push(`# ${command}: with -d KEYDIR also ${extra.join(" ")}`);
    each(
      command,
      `${env}deno run --no-prompt`,
      commandFlags(command, DEFAULT_PLACES),
      `main.ts ${command}`,
    );
  }
  const worker = workerFlags([...LIBC_PATHS, ...SODIUM_PATHS, ...NETTLE_PATHS], {
    ...DEFAULT_PLACES,
    code: "CODE",
  });
  each(
    "client worker (started by the supervisor; --allow-ffi names the libraries it loaded)",
    "deno run --no-prompt --config=CODE/deno.json",
    worker,
    "CODE/main.ts client-worker ...",
  );
  each(
    "compile",
    "deno compile --no-prompt",
    [...compileFlags(DEFAULT_PLACES), ...COMPILE_INCLUDES.map((f) => `--include=${f}`)],
    "--output dist/pqconnect main.ts",
  );
  block.push("```", "", DOC_END);
  return replaceBlock(text, DOC_BEGIN, DOC_END, block.join("\n"), "doc/permissions.md");
}

function replaceBlock(text: string, begin: string, end: string, block: string, file: string) {
  const from = text.indexOf(begin);
  const to = text.indexOf(end, from);
  if (from < 0 || to < 0) throw new Error(`${file}: the generated block's markers are missing`);
  return text.slice(0, from) + block + text.slice(to + end.length);
}

export const TARGETS: [string, (text: string) => string][] = [
  ["deno.json", renderDenoJson],
  ["pqconnect", renderLauncher],
  ["doc/permissions.md", renderDoc],
];

if (import.meta.main) {
  const check = Deno.args.includes("--check");
  const root = new URL("../", import.meta.url);
  let stale = 0;
  for (const [file, render] of TARGETS) {
    const url = new URL(file, root);
    const text = Deno.readTextFileSync(url);
    const want = render(text);
    if (want === text) continue;
    stale++;
    if (check) console.error(`${file}: permissions differ from lib/runtime/permissions.ts`);
    else Deno.writeTextFileSync(url, want);
  }
  if (check && stale > 0) Deno.exit(1);
}
