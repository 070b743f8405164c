// Our DNS queue rules as text: iptables lines split as the shell would, the queue number each
// rule and nftables table carries, and an older build's unnumbered ones. The queue itself, end to
// end in two network namespaces, is tests/nfqueue_ns_test.ts, in the root-only run.

import assert from "node:assert/strict";
import {
  iptablesRules,
  nftScript,
  queueOfIptablesRule,
  queueOfLegacyNftTable,
  queueOfTag,
  RULE_TAG,
  ruleTag,
  splitIptablesLine,
} from "../lib/runtime/firewall.ts";

Deno.test("iptables -S lines split like the shell would", () => {
  assert.deepEqual(
    splitIptablesLine(`-A INPUT -p udp -m comment --comment "two words \\"q\\"" -j NFQUEUE`),
    ["-A", "INPUT", "-p", "udp", "-m", "comment", "--comment", 'two words "q"', "-j", "NFQUEUE"],
  );
  assert.deepEqual(splitIptablesLine("  -A  X  "), ["-A", "X"]);
  assert.deepEqual(splitIptablesLine('-A X --comment ""'), ["-A", "X", "--comment", ""]);
});

Deno.test("each queue's rules carry its number, and only names of that form are ours", () => {
  assert.equal(ruleTag(4242), "pqconnect-ts-q4242");
  for (const q of [0, 7, 4242, 65535]) assert.equal(queueOfTag(ruleTag(q)), q);
  for (
    const tag of [
      RULE_TAG,
      "pqconnect-ts-q",
      "pqconnect-ts-q65536",
      "pqconnect-ts-q042",
      "pqconnect-ts-q42x",
      "x-pqconnect-ts-q42",
      "pqconnect-ts-q-1",
    ]
  ) {
    assert.equal(queueOfTag(tag), null, tag);
  }
  assert.throws(() => ruleTag(65536), RangeError);
  assert.match(nftScript(9), /^table ip pqconnect-ts-q9 \{\}\ndelete table ip pqconnect-ts-q9\n/);
  assert.match(nftScript(9), /queue num 9 bypass/);
  for (const rule of iptablesRules(9)) {
    assert.equal(rule[rule.indexOf("--comment") + 1], "pqconnect-ts-q9");
    assert.equal(rule[rule.indexOf("--queue-num") + 1], "9");
  }
});

Deno.test("an older build's unnumbered rule is ours, its queue read from the rule", () => {
  const rule = (line: string) => queueOfIptablesRule(splitIptablesLine(line));
  const udp = "-A INPUT -p udp -m udp --sport 53 -m conntrack --ctstate ESTABLISHED -m comment";
  assert.deepEqual(
    rule(`${udp} --comment pqconnect-ts -j NFQUEUE --queue-num 4242 --queue-bypass`),
    { queueNum: 4242, legacy: true },
  );
  assert.deepEqual(rule(`${udp} --comment pqconnect-ts -j NFQUEUE --queue-bypass`), {
    queueNum: 0,
    legacy: true,
  });
  assert.deepEqual(rule(`${udp} --comment pqconnect-ts-q7 -j NFQUEUE --queue-num 7`), {
    queueNum: 7,
    legacy: false,
  });
  // Not an older build's rule: another target, another comment, a queue number out of range.
  assert.equal(rule(`${udp} --comment pqconnect-ts -j ACCEPT`), null);
  assert.equal(rule(`${udp} --comment pqconnect-tsx -j NFQUEUE --queue-num 1`), null);
  assert.equal(rule(`${udp} --comment pqconnect-ts -j NFQUEUE --queue-num 70000`), null);
  assert.equal(rule(`${udp} -j NFQUEUE --queue-num 4242`), null);

  // nftables: as the older build wrote it, as newer nft lists it, and what is not its table.
  const table = (statements: string[]) =>
    queueOfLegacyNftTable(
      [
        "table ip pqconnect-ts {",
        "\tchain dns-answers {",
        "\t\ttype filter hook input priority mangle; policy accept;",
        ...statements.map((st) => `\t\tudp sport 53 ct state established ${st}`),
        "\t}",
        "}",
      ].join("\n"),
    );
  assert.equal(table(["queue num 4242 bypass", "queue num 4242 bypass"]), 4242);
  assert.equal(table(["queue flags bypass to 4243", "queue flags bypass to 4243"]), 4243);
  assert.equal(table(["queue flags bypass"]), 0);
  assert.equal(table(["queue num 1 bypass", "queue num 2 bypass"]), null);
  assert.equal(table(["accept"]), null);
  assert.equal(table(["queue num 99999"]), null);
});
