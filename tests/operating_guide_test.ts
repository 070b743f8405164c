// doc/operating.md, run: every shell block of the operator's guide is executed in the
// two-namespace lab as the HTML comment above it says, so the guide cannot drift from the code.
//
//   <!-- lab: vars -->                       the variables (the test puts lab values in)
//   <!-- lab: server|client [options] -->    run in that namespace; options:
//        expect=/re/     stdout+stderr must match     status=N   exit status (default 0)
//        publish         stdout is zone records: published by the lab's DNS server
//        background=/re/ as=NAME   a daemon: started, ready when its output matches; a later
//                        block with the same as=NAME replaces it (stopped first)
//        then-stop=NAME  stop that daemon after the block
//   <!-- lab: skip (reason) -->              not run; the reason says what is run instead
//
// In the lab `pqconnect` is this checkout's ./pqconnect launcher and `pqconnect-server` the
// reference's, run in its Debian 13 root (with the same key files copied in: in a real
// deployment both read the one directory). Needs root.

import assert from "node:assert/strict";
import {
  createLab,
  destroyLab,
  type Lab,
  labLeftovers,
  type LabProcess,
  notRootReason,
  run,
  spawn,
} from "./lab/netns.ts";
import { type Dnsmasq, startDnsmasq, type Zone } from "./lab/dnsmasq.ts";
import {
  installServerKeys,
  prepareReferenceRoot,
  REF_ROOT,
  ReferenceProcess,
  releaseReferenceRoot,
} from "./lab/reference.ts";
import {
  cacheDependencies,
  denoEnv,
  ensurePrivsepUser,
  labPermissionProblem,
  logs,
  PROJECT_DIR,
  removeStaleTempDirs,
  Teardown,
} from "./helpers/lab_util.ts";

const PREFIX = "pqts-ops";
const GUIDE = `${PROJECT_DIR}/doc/operating.md`;
const UNITS = ["pqconnect-server.service", "pqconnect-client.service"];

const skip = notRootReason();
if (skip) console.log(`operating_guide_test: skipped, ${skip}`);

export interface GuideBlock {
  line: number;
  directive: string;
  code: string;
}

/** Every ```sh block with the lab directive right above it (a block without one is an error). */
export function guideBlocks(text: string): GuideBlock[] {
  const blocks: GuideBlock[] = [];
  const lines = text.split("\n");
  let directive: string | null = null;
  for (let i = 0; i < lines.length; i++) {
    const d = /^<!-- lab: (.*) -->$/.exec(lines[i]);
    if (d) {
      directive = d[1];
      continue;
    }
    if (lines[i] === "```sh") {
      const start = i + 1;
      while (i < lines.length && lines[i + 1] !== "```") i++;
      const code = lines.slice(start, i + 1).join("\n");
      if (directive === null) {
        throw new Error(`${GUIDE}:${start}: a shell block with no lab directive`);
      }
      blocks.push({ line: start, directive, code });
      directive = null;
      i++;
    } else if (lines[i].trim() !== "" && directive !== null && !lines[i].startsWith("<!--")) {
      throw new Error(`${GUIDE}:${i + 1}: text between a lab directive and its block`);
    }
  }
  return blocks;
}

function option(directive: string, key: string): string | undefined {
  const m = new RegExp(`(?:^| )${key}(?:=(/(?:[^/\\\\]|\\\\.)*/|\\S+))?(?= |$)`).exec(directive);
  if (!m) return undefined;
  return m[1] ?? "";
}

function regex(value: string): RegExp {
  return new RegExp(value.slice(1, -1));
}

/** Zone-file lines from `pqconnect announce` merged into the zone: a CNAME replaces the
 * name's old one, A records are added (old pq1 names stay, as the guide says). */
function publish(zone: Zone, records: string): void {
  const strip = (n: string) => n.replace(/\.$/, "");
  for (const line of records.split("\n").filter((l) => l.trim())) {
    const f = line.trim().split(/\s+/);
    const at = f.indexOf("IN");
    assert.ok(at >= 1 && f.length >= at + 3, `not a zone-file record: ${line}`);
    if (f[at + 1] === "CNAME") {
      zone.cnames = zone.cnames!.filter((c) => c.alias !== strip(f[0]));
      zone.cnames.push({ alias: strip(f[0]), target: strip(f[at + 2]) });
    } else if (f[at + 1] === "A") {
      zone.hosts!.push({ name: strip(f[0]), addr: f[at + 2] });
    } else throw new Error(`unexpected record: ${line}`);
  }
}

Deno.test("operating guide: the shell blocks are all run or say why not", () => {
  const blocks = guideBlocks(Deno.readTextFileSync(GUIDE));
  assert.ok(blocks.length >= 15, `only ${blocks.length} blocks found`);
  for (const b of blocks) {
    assert.match(b.directive, /^(vars|server|client|skip \(.+\))( |$)/, `line ${b.line}`);
  }
  const skipped = blocks.filter((b) => b.directive.startsWith("skip"));
  assert.equal(skipped.length, 1, "only the systemctl block is not run");
  assert.match(skipped[0].code, /systemctl/);
});

Deno.test({
  name: "operating guide: every command runs in the lab as the guide says",
  ignore: skip !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const problem = labPermissionProblem("tests/operating_guide_test.ts");
    if (problem) throw new Error(problem);
    const t0 = performance.now();
    let lab: Lab | null = null;
    let work: string | null = null;
    let dns: Dnsmasq | null = null;
    let refRoot = false;
    const daemons = new Map<string, { stop: () => Promise<unknown>; log: () => string }>();
    let failure: unknown = null;
    try {
      await cacheDependencies();
      await ensurePrivsepUser();
      lab = await createLab({ prefix: PREFIX });
      const l = lab;
      await removeStaleTempDirs(["pqts-ops-"]);
      work = await Deno.makeTempDir({ prefix: "pqts-ops-" });
      // `pqconnect` and `pqconnect-server` as the guide calls them.
      const bin = `${work}/bin`;
      await Deno.mkdir(bin);
      await Deno.symlink(`${PROJECT_DIR}/pqconnect`, `${bin}/pqconnect`);
      await Deno.writeTextFile(
        `${bin}/pqconnect-server`,
        `#!/bin/bash\n# The reference server in its root; -d names the root's own key directory\n` +
          `# (the test copied the same key files there).\nargs=()\nwhile [ $# -gt 0 ]; do\n` +
          `  case "$1" in -d|--keydir) args+=(-d /etc/pqconnect/keys); shift 2 ;;\n` +
          `  *) args+=("$1"); shift ;; esac\ndone\n` +
          `exec chroot ${REF_ROOT} pqconnect-server "\${args[@]}"\n`,
      );
      await Deno.chmod(`${bin}/pqconnect-server`, 0o755);
      const env = {
        ...denoEnv(),
        PATH: `${bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
        PYTHONUNBUFFERED: "1",
      };
      const keys = `${work}/keys`;
      const vars = `KEYS=${keys}\nNAME=www.lab.test\nIP=${l.serverAddr}\n`;
      const zone: Zone = { domain: "lab.test", hosts: [], cnames: [] };
      const allLogs = () =>
        logs(Object.fromEntries([...daemons].map(([k, d]) => [k, d.log()])), 30);

      const blocks = guideBlocks(await Deno.readTextFile(GUIDE));
      let ran = 0;
      for (const b of blocks) {
        const d = b.directive;
        if (d === "vars") {
          assert.match(b.code, /^KEYS=.*\nNAME=.*\nIP=.*$/, "the vars block sets KEYS, NAME, IP");
          continue;
        }
        if (d.startsWith("skip")) continue;
        const ns = d.startsWith("server") ? l.serverNs : l.clientNs;
        const what = `${GUIDE}:${b.line} (${d}):\n${b.code}`;
        if (b.code.includes("pqconnect-server")) {
          if (!refRoot) await prepareReferenceRoot();
          refRoot = true;
          await installServerKeys(keys);
        }
        const name = option(d, "as");
        if (name !== undefined && daemons.has(name)) {
          await daemons.get(name)!.stop();
          daemons.delete(name);
        }
        const background = option(d, "background");
        if (background !== undefined) {
          assert.ok(name, `${what}\na background block needs as=NAME`);
          const p: LabProcess = spawn(ns, ["bash", "-c", `${vars}exec ${b.code}`], {
            name: `${name}@${ns}`,
            env,
          });
          const daemon = b.code.includes("pqconnect-server")
            ? new ReferenceProcess(p, async () => {})
            : null;
          daemons.set(name, {
            stop: () => daemon ? daemon.stop() : p.stop("SIGTERM", 10_000),
            log: () => p.output(),
          });
          try {
            await p.waitFor(regex(background), 120_000);
          } catch (e) {
            throw new Error(`${what}\ndid not get ready: ${(e as Error).message}\n${allLogs()}`);
          }
        } else {
          const r = await run(ns, ["bash", "-euo", "pipefail", "-c", vars + b.code], {
            env,
            check: false,
            timeoutMs: 120_000,
          });
          const out = r.stdout + r.stderr;
          console.log(`--- ${b.code.split("\n")[0]} (${d}) exit ${r.code} ---\n${out.trimEnd()}`);
          const status = Number(option(d, "status") ?? "0");
          assert.equal(r.code, status, `${what}\nexit ${r.code}:\n${out}\n${allLogs()}`);
          const expect = option(d, "expect");
          if (expect) assert.match(out, regex(expect), `${what}\n${allLogs()}`);
          if (option(d, "publish") !== undefined) {
            publish(zone, r.stdout);
            await dns?.stop();
            dns = await startDnsmasq({ ns: l.serverNs, listen: l.serverAddr, zone });
          }
        }
        const stop = option(d, "then-stop");
        if (stop) {
          await daemons.get(stop)?.stop();
          daemons.delete(stop);
        }
        ran++;
      }
      console.log(`operating guide: ${ran} blocks run`);

      // The systemd units' ExecStart lines: every option they give parses (--help exits 0
      // only after a strict parse of all of them).
      for (const unit of UNITS) {
        const text = await Deno.readTextFile(`${PROJECT_DIR}/dist/systemd/${unit}`);
        const exec = /^ExecStart=(\S+) (.*)$/m.exec(text);
        assert.ok(exec, `${unit} has no ExecStart`);
        assert.equal(exec[1], "/usr/local/bin/pqconnect");
        const r = await run(l.serverNs, ["bash", "-c", `pqconnect ${exec[2]} --help`], {
          env,
          check: false,
        });
        assert.equal(r.code, 0, `${unit}: pqconnect ${exec[2]} --help\n${r.stdout}${r.stderr}`);
        assert.match(r.stdout, /^Usage: pqconnect/);
      }
    } catch (e) {
      failure = e;
    }
    const td = new Teardown();
    for (const [name, d] of [...daemons].reverse()) await td.attempt(`stop ${name}`, d.stop);
    await td.attempt("stop dnsmasq", () => dns?.stop());
    await td.attempt("destroy lab", () => destroyLab(PREFIX));
    if (refRoot) await td.attempt("release reference root", releaseReferenceRoot);
    if (work) await td.attempt(`remove ${work}`, () => Deno.remove(work!, { recursive: true }));
    await td.attempt("lab leftovers", async () => assert.deepEqual(await labLeftovers(PREFIX), []));
    console.log(`operating_guide_test: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    td.finish(failure);
  },
});
