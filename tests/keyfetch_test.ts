// The paced key download against a simulated lossy, reordering, lying network.

import assert from "node:assert/strict";
import { fixture } from "./fixtures.ts";
import { KeyFetcher } from "../lib/client/keyfetch.ts";
import { KeyTree } from "../lib/core/keytree.ts";
import { answerKeyRequest } from "../lib/core/keyserver.ts";
import { EphemeralKeyStore } from "../lib/core/ephemeral.ts";

const tree = KeyTree.build(fixture("mceliece_pk"), fixture("x25519_pk"));

/** A deterministic pseudo-random sequence, so failures reproduce. */
function rng(seed: number) {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
}

function simulate(loss: number, seed: number, forge = false) {
  const random = rng(seed);
  const fetcher = new KeyFetcher(tree.root, 0);
  const store = new EphemeralKeyStore();
  let now = 0;
  let inFlight: { at: number; data: Uint8Array }[] = [];
  let maxOutstanding = 0;
  while (!fetcher.complete && now < 60) {
    for (const req of fetcher.poll(now)) {
      if (random() < loss) continue;
      const a = answerKeyRequest(req, tree, store, now);
      assert.ok(a.ok);
      assert.equal(a.response.length, req.length, "never larger than the request");
      const delay = 0.002 + random() * 0.01; // reordering through varying delay
      inFlight.push({ at: now + delay, data: a.response });
      if (random() < 0.05) inFlight.push({ at: now + delay * 2, data: a.response }); // duplicate
      if (forge && random() < 0.1) {
        const bad = a.response.slice();
        bad[bad.length - 1] ^= 0x55;
        inFlight.push({ at: now + delay / 2, data: bad });
      }
    }
    maxOutstanding = Math.max(maxOutstanding, fetcher.inFlight);
    now += 0.001;
    const due = inFlight.filter((p) => p.at <= now);
    inFlight = inFlight.filter((p) => p.at > now);
    for (const p of due) fetcher.onResponse(p.data, now);
  }
  return { fetcher, now, maxOutstanding };
}

Deno.test("key download completes on a clean network with few extra requests", () => {
  const { fetcher, now } = simulate(0, 1);
  assert.ok(fetcher.complete);
  assert.deepEqual(fetcher.keys().mceliecePk, fixture("mceliece_pk"));
  assert.deepEqual(fetcher.keys().x25519Pk, fixture("x25519_pk"));
  assert.ok(fetcher.requestsSent < 937 * 1.05, `${fetcher.requestsSent} requests`);
  assert.ok(now < 1, `took ${now} simulated seconds`);
});

Deno.test("key download survives 30% loss, duplicates, reordering and forged responses", () => {
  for (const seed of [2, 3, 4]) {
    const { fetcher } = simulate(0.3, seed, true);
    assert.ok(fetcher.complete, `seed ${seed}`);
    assert.deepEqual(fetcher.keys().mceliecePk, fixture("mceliece_pk"));
    assert.ok(fetcher.responsesRejected > 0, "forgeries and duplicates were refused");
  }
});

Deno.test("key download into silence stays bounded (no flood)", () => {
  const fetcher = new KeyFetcher(tree.root, 0);
  let sent = 0;
  for (let t = 0; t < 20; t += 0.01) sent += fetcher.poll(t).length;
  // one outstanding node at depth 1, retried with exponential backoff
  assert.ok(sent <= 20, `${sent} requests in 20 s of silence`);
  assert.ok(!fetcher.complete);
});

/**
 * A key server like the reference's: one thread answering in order, one request per
 * `serviceSeconds`, behind a receive buffer that holds `capacity` requests and drops the rest.
 */
function slowServer(capacity: number, serviceSeconds: number) {
  const fetcher = new KeyFetcher(tree.root, 0);
  const store = new EphemeralKeyStore();
  const queue: Uint8Array[] = [];
  let answers: { at: number; data: Uint8Array }[] = [];
  let busyUntil = 0;
  let dropped = 0;
  let now = 0;
  const step = 0.0001;
  while (!fetcher.complete && now < 20) {
    for (const req of fetcher.poll(now)) {
      if (queue.length < capacity) queue.push(req);
      else dropped++;
    }
    while (queue.length > 0 && busyUntil <= now) {
      const a = answerKeyRequest(queue.shift()!, tree, store, now);
      assert.ok(a.ok);
      busyUntil = Math.max(busyUntil, now) + serviceSeconds;
      answers.push({ at: busyUntil + 0.0001, data: a.response });
    }
    now += step;
    const due = answers.filter((p) => p.at <= now);
    answers = answers.filter((p) => p.at > now);
    for (const p of due) fetcher.onResponse(p.data, now);
  }
  return { fetcher, now, dropped };
}

Deno.test("key download from a slow server with a small receive buffer resends lost requests early", () => {
  // 937 parts at 0.2 ms each take 0.19 s of service; the buffer holds 20 requests.
  const { fetcher, now, dropped } = slowServer(20, 0.0002);
  assert.ok(fetcher.complete);
  assert.deepEqual(fetcher.keys().mceliecePk, fixture("mceliece_pk"));
  assert.ok(dropped > 0, "the first window overflows the buffer");
  // Waiting for the ≥ 100 ms retransmission timeout after each overflow took ≥ 0.4 s here.
  assert.ok(now < 0.3, `took ${now.toFixed(3)} simulated seconds, ${dropped} dropped`);
  assert.ok(fetcher.requestsSent < 937 + 200, `${fetcher.requestsSent} requests`);
});
