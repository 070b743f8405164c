// Test helper, run inside the client network namespace by tests/nfqueue_ns_test.ts.
//
//   serve <queue>    bind the queue, install the DNS rule, rewrite pq1 answers until SIGTERM,
//                    then remove the rule. Prints JSON lines: {"ready":...}, {"rewrite":...},
//                    {"stats":...}.
//   cleanup <queue>  remove the queue's rules left by a killed run; prints {"removed": n}.

import { NfQueue } from "../../ffi/nfqueue.ts";
import { DnsRewriter } from "../../lib/core/dns_rewrite.ts";
import {
  installDnsQueueRule,
  removeDnsQueueRule,
  removeStaleRules,
} from "../../lib/runtime/firewall.ts";
import { parsePq1Name } from "../../lib/core/names.ts";
import { ipv4ToNumber, numberToIpv4 } from "../../lib/core/ip.ts";

function emit(obj: unknown): void {
  console.log(JSON.stringify(obj));
}

async function serve(queueNum: number): Promise<void> {
  // Bind first: with the rule's bypass, answers before the bind simply pass unmodified, and
  // holding the queue shows its rules are leftovers.
  const queue = await NfQueue.open(queueNum, { pollIntervalMs: 100 });
  let handle;
  let stale;
  try {
    stale = await removeStaleRules(queueNum);
    handle = await installDnsQueueRule(queueNum);
  } catch (e) {
    queue.close();
    throw e;
  }
  const next = new Map<string, number>();
  const rewriter = new DnsRewriter({
    parseName: parsePq1Name,
    assign: (_ann, real, owner) => {
      const key = `${owner.toLowerCase()}|${real}`;
      if (!next.has(key)) next.set(key, ipv4ToNumber(`10.43.0.${next.size + 2}`));
      return next.get(key)!;
    },
  });
  const stop = () => queue.close();
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  emit({ ready: true, backend: handle.backend, table: handle.table, staleRemoved: stale });
  try {
    for await (const p of queue.packets()) {
      const r = p.truncated ? { action: "pass" as const } : rewriter.process(p.payload);
      if (r.action === "rewrite") {
        queue.verdict(p.id, true, r.packet);
        emit({
          rewrite: r.announcements.map((a) => [
            a.ownerName,
            numberToIpv4(a.realAddress),
            numberToIpv4(a.internalAddress),
          ]),
        });
      } else {
        queue.verdict(p.id, true);
      }
    }
  } finally {
    Deno.removeSignalListener("SIGTERM", stop);
    Deno.removeSignalListener("SIGINT", stop);
    await removeDnsQueueRule(handle);
    queue.close();
    emit({ stats: { queue: queue.stats, dns: rewriter.stats } });
  }
}

const [mode, arg] = Deno.args;
if (mode === "serve") {
  await serve(Number(arg));
} else if (mode === "cleanup") {
  emit({ removed: await removeStaleRules(Number(arg)) });
} else {
  console.error("usage: nfq_dns_client.ts serve <queue> | cleanup <queue>");
  Deno.exit(2);
}
