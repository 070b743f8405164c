// pqconnect: post-quantum tunnels for every application (PQConnect, pq1 protocol).

import { type Command, UsageError } from "./lib/cli/common.ts";
import { keygenCommand } from "./lib/cli/keygen.ts";
import { announceCommand } from "./lib/cli/announce.ts";
import { serverCommand } from "./lib/cli/server.ts";
import { clientCommand, clientWorkerCommand, statusCommand } from "./lib/cli/client.ts";
import { checkCommand } from "./lib/cli/check.ts";
import { versionLine } from "./lib/cli/version.ts";
import { KeyFileError } from "./lib/runtime/keyfiles.ts";

const COMMANDS: Command[] = [
  clientCommand,
  serverCommand,
  keygenCommand,
  announceCommand,
  statusCommand,
  checkCommand,
];
/** Not listed in the help: started by another command. */
const INTERNAL: Command[] = [clientWorkerCommand];

function mainUsage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    "Usage: pqconnect COMMAND [OPTIONS]",
    "",
    "Automatic end-to-end post-quantum tunnels (PQConnect, protocol pq1).",
    "",
    "Commands:",
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    'Run "pqconnect COMMAND --help" for the options of a command.',
  ].join("\n");
}

export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "-h" || name === "--help" || name === "help") {
    console.log(mainUsage());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "version") {
    console.log(versionLine());
    return 0;
  }
  const command = [...COMMANDS, ...INTERNAL].find((c) => c.name === name);
  if (!command) {
    console.error(`pqconnect: unknown command "${name}"\n\n${mainUsage()}`);
    return 2;
  }
  // Every command answers --version (as the reference's do), before its options are checked.
  if (rest.includes("--version")) {
    console.log(versionLine());
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`pqconnect ${name}: ${e.message}\n\n${command.usage}`);
      return 2;
    }
    if (e instanceof KeyFileError) {
      console.error(`pqconnect ${name}: ${e.message}`);
      return 1;
    }
    console.error(`pqconnect ${name}: ${(e as Error).message ?? e}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
