// The keygen and announce commands, run as a user would run them.

import assert from "node:assert/strict";
import { fixtureDir } from "./fixtures.ts";
import {
  KEY_FILES,
  KeyFileError,
  looseKeyFiles,
  readServerKeys,
  refuseLooseKeyFiles,
} from "../lib/runtime/keyfiles.ts";
import { KeyTree } from "../lib/core/keytree.ts";
import { formatPq1Label } from "../lib/core/names.ts";
import { loadMcEliece6960119 } from "../wasm/kem.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const REFERENCE_ROOT = Deno.env.get("PQREF_ROOT") ?? "/srv/pqref";

async function pqconnect(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * `pqconnect ARGS` as a user without privileges: as root, as nobody (setpriv) with a module cache
 * of its own (the npm packages come from the project's node_modules, so nothing is fetched).
 */
async function pqconnectUnprivileged(...args: string[]) {
  const cache = await Deno.makeTempDir();
  try {
    await Deno.chmod(cache, 0o777);
    const deno = [Deno.execPath(), "run", "--no-prompt", "--cached-only", "-A", MAIN, ...args];
    const nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env"];
    const argv = Deno.uid() === 0
      ? [...nobody, `HOME=${cache}`, `DENO_DIR=${cache}`, ...deno]
      : deno;
    const out = await new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
}

Deno.test("announce prints the reference's pq1 name for the reference's key files", async () => {
  const r = await pqconnect(
    "announce",
    "--name",
    "www.lab.test",
    "--ip",
    "198.18.0.1",
    "-d",
    fixtureDir,
  );
  assert.equal(r.code, 0, r.stderr);
  const label = "pq1bw6fy9r2vsf6jj97m0wy14pmg6sybl7vpd8d06g0kmpj5pgmp921" + "55g1" + "5fg1";
  assert.equal(
    r.stdout,
    `www.lab.test.\tIN\tCNAME\t${label}.lab.test.\n${label}.lab.test.\tIN\tA\t198.18.0.1\n`,
  );
});

Deno.test("announce rejects bad input with a message and a non-zero exit", async () => {
  const cases: [string[], number, RegExp][] = [
    [["--name", "www.lab.test", "--ip", "300.1.1.1", "-d", fixtureDir], 2, /--ip must be an IPv4/],
    [["--name", "www lab", "--ip", "1.2.3.4", "-d", fixtureDir], 2, /--name must be a DNS name/],
    [["--ip", "1.2.3.4", "-d", fixtureDir], 2, /--name is required/],
    [["--name", "www.lab.test", "--ip", "1.2.3.4", "-p", "70000", "-d", fixtureDir], 2, /port/],
    [["--name", "www.lab.test", "--ip", "1.2.3.4", "--bogus"], 2, /Unknown option/],
    [["--name", "www.lab.test", "--ip", "1.2.3.4", "-d", "/nonexistent"], 1, /does not exist/],
  ];
  for (const [args, code, message] of cases) {
    const r = await pqconnect("announce", ...args);
    assert.equal(r.code, code, args.join(" "));
    assert.match(r.stderr, message);
  }
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/mceliece_pk`, new Uint8Array(1000));
    await Deno.writeFile(`${dir}/x25519_pk`, new Uint8Array(32));
    const r = await pqconnect("announce", "--name", "www.lab.test", "--ip", "1.2.3.4", "-d", dir);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /has 1000 bytes, expected 1047319/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("every command answers --help, and its help lists --version", async () => {
  for (const cmd of ["client", "server", "keygen", "announce", "status", "check"]) {
    const r = await pqconnect(cmd, "--help");
    assert.equal(r.code, 0, cmd);
    assert.match(r.stdout, new RegExp(`^Usage: pqconnect ${cmd}`));
    assert.match(r.stdout, /^ +--version +show the version$/m, cmd);
  }
  const r = await pqconnect("frobnicate");
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown command/);
});

Deno.test({
  name: "keygen writes working keys in the reference format, 0600 secrets, and never overwrites",
  // McEliece key generation in WebAssembly takes ~20 s
  sanitizeResources: false,
  async fn() {
    const parent = await Deno.makeTempDir();
    const dir = `${parent}/keys`;
    try {
      const r = await pqconnect("keygen", "--keydir", dir);
      assert.equal(r.code, 0, r.stderr);
      const st = Deno.statSync(dir);
      assert.equal(st.mode! & 0o777, 0o700);
      for (
        const [name, mode] of [
          ["mceliece_sk", 0o600],
          ["x25519_sk", 0o600],
          ["session_key", 0o600],
          ["mceliece_pk", 0o644],
          ["x25519_pk", 0o644],
        ] as const
      ) {
        assert.equal(Deno.statSync(`${dir}/${name}`).mode! & 0o777, mode, name);
      }
      assert.deepEqual(looseKeyFiles(dir), [], "keygen's modes pass the server's check");
      const keys = readServerKeys(dir);
      const label = formatPq1Label(KeyTree.build(keys.mceliecePk, keys.x25519Pk).root);
      assert.match(r.stdout, new RegExp(label));
      const kem = await loadMcEliece6960119();
      const enc = kem.encapsulate(keys.mceliecePk);
      assert.deepEqual(kem.decapsulate(enc.ciphertext, keys.mcelieceSk), enc.sharedSecret);

      const before = Deno.readFileSync(`${dir}/x25519_sk`);
      const again = await pqconnect("keygen", "--keydir", dir);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /refusing to overwrite/);
      assert.deepEqual(Deno.readFileSync(`${dir}/x25519_sk`), before);

      // The reference derives the same name from these files.
      if (Deno.uid() === 0 && exists(`${REFERENCE_ROOT}/usr/lib/python3/dist-packages/pqconnect`)) {
        const ref = await referenceName(dir);
        assert.equal("pq1" + ref, label);
      } else {
        console.log(`skipped the reference cross-check: no reference root at ${REFERENCE_ROOT}`);
      }
    } finally {
      await Deno.remove(parent, { recursive: true });
    }
  },
});

Deno.test("keygen into a directory it cannot make fails at once, before generating keys", async () => {
  const file = await Deno.makeTempFile();
  try {
    const r = await pqconnect("keygen", "--keydir", `${file}/keys`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /pqconnect keygen: cannot create .*\/keys: Not a directory/);
    assert.doesNotMatch(r.stderr, /generating/);
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("secret key files others may read or write, public ones others may write, a key directory others may write, and any of them not the server's, are named and refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const modes: [string, number][] = [
      ["mceliece_pk", 0o644],
      ["mceliece_sk", 0o644],
      ["x25519_pk", 0o644],
      ["x25519_sk", 0o600],
      ["session_key", 0o620],
    ];
    for (const [name, mode] of modes) {
      await Deno.writeFile(`${dir}/${name}`, new Uint8Array(1));
      await Deno.chmod(`${dir}/${name}`, mode);
    }
    assert.deepEqual(looseKeyFiles(dir), [
      `${dir}/mceliece_sk is mode 0644: a secret key should be readable by its owner only ` +
      `(chmod 600 ${dir}/mceliece_sk)`,
      `${dir}/session_key is mode 0620: a secret key should be readable by its owner only ` +
      `(chmod 600 ${dir}/session_key)`,
    ]);
    await Deno.chmod(`${dir}/mceliece_sk`, 0o400);
    await Deno.chmod(`${dir}/session_key`, 0o600);
    assert.deepEqual(looseKeyFiles(dir), []);
    // Public keys: anyone may read them (the key server hands them out); none but the owner may
    // write them, the group included.
    for (const mode of [0o664, 0o646, 0o666]) {
      await Deno.chmod(`${dir}/x25519_pk`, mode);
      assert.deepEqual(looseKeyFiles(dir), [
        `${dir}/x25519_pk is mode 0${mode.toString(8)}: others than its owner could replace the ` +
        `server's public key, and with it the identity clients verify (chmod go-w ${dir}/x25519_pk)`,
      ]);
    }
    await Deno.chmod(`${dir}/x25519_pk`, 0o444);
    assert.deepEqual(looseKeyFiles(dir), [], "read-only for everyone is fine");
    await Deno.chmod(`${dir}/x25519_pk`, 0o644);
    // Owners: the files and the directory are ours (whoever runs this test); a server running as
    // another user must refuse every one, secret or public, naming the chown that fixes it.
    const me = Deno.uid()!;
    const other = me === 0 ? 4242 : 0;
    const who = other === 0 ? "root" : `uid ${other}`;
    const chownTo = other === 0 ? "root" : String(other);
    assert.deepEqual(looseKeyFiles(dir, me), []);
    assert.deepEqual(looseKeyFiles(dir, other), [
      `${dir} is owned by uid ${me}, not by ${who} that the server runs as: that user could ` +
      `replace the keys (chown ${chownTo} ${dir})`,
      ...Object.keys(KEY_FILES).map((name) =>
        `${dir}/${name} is owned by uid ${me}, not by ${who} that the server runs as: that user ` +
        `${
          name.endsWith("_pk")
            ? "could replace the server's identity"
            : "may read and replace this secret key"
        } (chown ${chownTo} ${dir}/${name})`
      ),
    ]);
    assert.deepEqual(looseKeyFiles(`${dir}/absent`), [], "missing files: readKeyFile says");
    for (const [mode, loose] of [[0o700, false], [0o755, false], [0o775, true], [0o1777, false]]) {
      await Deno.chmod(dir, mode as number);
      assert.deepEqual(
        looseKeyFiles(dir),
        loose
          ? [
            `${dir} is mode 0775: others than its owner could replace the keys (chmod go-w ${dir})`,
          ]
          : [],
        `directory mode ${(mode as number).toString(8)}`,
      );
    }
    await Deno.chmod(dir, 0o700);
    await Deno.chmod(`${dir}/x25519_sk`, 0o604);
    assert.throws(
      () => refuseLooseKeyFiles(dir),
      (e: Error) =>
        e instanceof KeyFileError &&
        e.message.startsWith(
          `refusing to use these keys:\n  ${dir}/x25519_sk is mode 0604: a secret key should ` +
            `be readable by its owner only (chmod 600 ${dir}/x25519_sk)\n`,
        ),
    );
    assert.throws(() => readServerKeys(dir), /x25519_sk is mode 0604/, "before any size check");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("server and client refuse to start without root, saying why", async () => {
  for (const [cmd, why] of [["server", /TUN device/], ["client", /DNS queue rule/]] as const) {
    const r = await pqconnectUnprivileged(cmd);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^pqconnect ${cmd}: must be started as root`, "m"));
    assert.match(r.stderr, why);
  }
});

Deno.test("key files the sandbox or the file system will not let be read are told apart", async () => {
  const args = ["announce", "--name", "www.lab.test", "--ip", "1.2.3.4", "-d"];
  const other = await Deno.makeTempDir();
  try {
    // Deno's sandbox: the read permission covers another directory.
    const sandboxed = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", `--allow-read=${other}`, MAIN, ...args, fixtureDir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(sandboxed.code, 1);
    assert.match(
      new TextDecoder().decode(sandboxed.stderr),
      /mceliece_pk: outside what this command may read \(Deno's --allow-read\)/,
    );
    // The file system: files nobody may read, read by an unprivileged user.
    await Deno.chmod(other, 0o755);
    for (const f of ["mceliece_pk", "x25519_pk"]) {
      await Deno.copyFile(`${fixtureDir}/${f}`, `${other}/${f}`);
      await Deno.chmod(`${other}/${f}`, 0o000);
    }
    const denied = await pqconnectUnprivileged(...args, other);
    assert.equal(denied.code, 1, denied.stderr);
    assert.match(
      denied.stderr,
      /mceliece_pk: permission denied \(run as the key files' owner, or root\)/,
    );
  } finally {
    await Deno.remove(other, { recursive: true });
  }
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Runs the reference's own key-tree code on our files, inside its Debian 13 root. */
async function referenceName(dir: string): Promise<string> {
  const work = `${REFERENCE_ROOT}/tmp/pqts-keygen-check`;
  await Deno.mkdir(work, { recursive: true });
  try {
    await Deno.copyFile(`${dir}/mceliece_pk`, `${work}/mceliece_pk`);
    await Deno.copyFile(`${dir}/x25519_pk`, `${work}/x25519_pk`);
    const script = "import sys\nfrom pqconnect.keys import PKTree\n" +
      "t = PKTree.from_file(sys.argv[1] + '/mceliece_pk', sys.argv[1] + '/x25519_pk')\n" +
      "print(t.get_base32_encoded_pubkey_hash())\n";
    const out = await new Deno.Command("chroot", {
      args: [REFERENCE_ROOT, "python3", "-c", script, "/tmp/pqts-keygen-check"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    return new TextDecoder().decode(out.stdout).trim();
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}
