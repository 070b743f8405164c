// The short fuzz run of CI (issue 10, point 7): the engine of `deno task fuzz`
// (tests/fuzz/engine.ts) with 60,000 inputs from a fixed seed. The full run is 1,000,000.

import assert from "node:assert/strict";
import { fixture } from "./fixtures.ts";
import { CryptoPool } from "../lib/runtime/crypto_pool.ts";
import { StderrLogger } from "../lib/runtime/log.ts";
import { checkReport, fuzz } from "./fuzz/engine.ts";

Deno.test({
  name: "fuzz: every parser and both devices, 60,000 structure-aware inputs, seed 1",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pool = await CryptoPool.start({ mcelieceSecretKey: fixture("mceliece_sk") });
    try {
      const r = await fuzz(pool, new StderrLogger("fuzz", "error"), { seed: 1, inputs: 60_000 });
      console.log(
        `fuzz: ${r.total} inputs in ${r.seconds.toFixed(1)} s; per surface ` +
          `${JSON.stringify(r.inputs)}; sealed keys ${r.sealedKeys}, reuses ` +
          `${r.keyReuses.length}; state ${JSON.stringify(r.state)}`,
      );
      assert.deepEqual(checkReport(r), [], JSON.stringify(r.exceptions, null, 1));
      assert.equal(r.total, 60_000);
    } finally {
      await pool.close();
    }
  },
});
