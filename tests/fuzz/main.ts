// `deno task fuzz`: the full, seeded run of the fuzzer (tests/fuzz/engine.ts).
//
//   deno task fuzz                      1,000,000 inputs from seed 1
//   deno task fuzz -- --inputs 200000 --seed 7
//
// Prints inputs per surface, exceptions, key reuses and state figures as JSON; exits 1 if
// anything threw, a key was sealed twice, or state grew past its bounds.

import { fixture } from "../fixtures.ts";
import { CryptoPool } from "../../lib/runtime/crypto_pool.ts";
import { StderrLogger } from "../../lib/runtime/log.ts";
import { checkReport, fuzz } from "./engine.ts";

const arg = (name: string, dflt: number) => {
  const i = Deno.args.indexOf(`--${name}`);
  return i >= 0 ? Number(Deno.args[i + 1]) : dflt;
};
const inputs = arg("inputs", 1_000_000);
const seed = arg("seed", 1);
const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
try {
  const report = await fuzz(pool, new StderrLogger("fuzz", "error"), {
    seed,
    inputs,
    progress: (r) => console.error(`fuzz: ${r.total} inputs, ${r.exceptionCount} exceptions`),
  });
  console.log(JSON.stringify(report, null, 2));
  const problems = checkReport(report);
  if (problems.length) {
    console.error(`fuzz: FAILED: ${problems.join("; ")}`);
    Deno.exitCode = 1;
  } else {
    console.error(`fuzz: ok, ${report.total} inputs in ${report.seconds.toFixed(1)} s`);
  }
} finally {
  await pool.close();
}
