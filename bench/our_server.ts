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
    benchKeyDir(),
    "-H",
    serverAddr,
    ...extra,
  ];
}

let keyDir: string | null = null;

/** The fixture keys copied with the modes the server demands (a checkout leaves the secret
 * files 0644, which it refuses); removed when the bench exits. */
function benchKeyDir(): string {
  if (keyDir !== null) return keyDir;
  const dir = Deno.makeTempDirSync({ prefix: "pqts-bench-keys-" });
  globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
  for (const [name, mode] of KEY_MODES) {
    Deno.copyFileSync(`${ROOT}/tests/fixtures/${name}`, `${dir}/${name}`);
    Deno.chmodSync(`${dir}/${name}`, mode);
  }
  keyDir = dir;
  return dir;
}

const KEY_MODES: [string, number][] = [
  ["mceliece_pk", 0o644],
  ["mceliece_sk", 0o600],
  ["x25519_pk", 0o644],
  ["x25519_sk", 0o600],
  ["session_key", 0o600],
];
