// The command line the lab benches start our server with: this checkout's main.ts on the test
// keys, decrypted traffic delivered to the server namespace's address, optionally profiled.

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");

export function ourServerArgv(
  serverAddr: string,
  profile: string | null,
  extra: string[] = [],
): string[] {
  return [
    Deno.execPath(),
    "run",
    "-A",
    ...(profile === null ? [] : ["--cpu-prof", `--cpu-prof-dir=${profile}`]),
    `${ROOT}/main.ts`,
    "server",
    "-d",
    `${ROOT}/tests/fixtures`,
    "-H",
    serverAddr,
    ...extra,
  ];
}
