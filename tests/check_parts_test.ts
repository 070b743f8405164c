// The pure parts of `pqconnect check`: DNS interpretation (label and TXT ports), the verdicts
// and their exit statuses, and the tunnel probe packets. The whole command runs against real
// servers in tests/check_test.ts.

import assert from "node:assert/strict";
import {
  cryptoPortFromTxt,
  interpretNames,
  interpretPorts,
  keyPortFromTxt,
} from "../lib/check/dns.ts";
import { ephemeralVerdict, type KeyDownload, keysVerdict } from "../lib/check/verdicts.ts";
import { icmpEcho, matchAnswer, tcpSyn } from "../lib/check/probe.ts";
import { EXIT, finishReport, formatReport } from "../lib/check/report.ts";
import { formatPq1Label } from "../lib/core/names.ts";
import {
  internetChecksum,
  ipv4HeaderChecksumOk,
  PROTO_TCP,
  pseudoHeaderSum,
} from "../lib/core/ip.ts";
import { readU16be, readU32be, writeU16be, writeU32be } from "../lib/core/bytes.ts";

const hash = new Uint8Array(32).map((_, i) => i * 7);

Deno.test("check DNS: ports from the label, or from TXT as the reference reads them", () => {
  const label = formatPq1Label(hash, { crypto: 624, key: 584 });
  const n = interpretNames(
    { host: "www.example.org", chain: [`${label}.example.org.`], addresses: ["192.0.2.7"] },
    3,
  );
  assert.equal(n.result.verdict, "pass");
  const p = interpretPorts(n.result, n.findings!, null);
  assert.deepEqual([p.ports!.crypto, p.ports!.key, p.ports!.source], [624, 584, "label"]);
  assert.match(p.result.details.join("\n"), /key hash \(hex\) +00070e15/);

  assert.equal(cryptoPortFromTxt(['"p=42424"']), 42424);
  assert.equal(cryptoPortFromTxt(["v=spf1 -all", "p=7"]), 7);
  assert.equal(cryptoPortFromTxt(["p=x", "q=1", "p=70000"]), null);
  assert.deepEqual(keyPortFromTxt(["ip=192.0.2.7;p=42425"]), { port: 42425, ip: "192.0.2.7" });
  assert.equal(keyPortFromTxt(["p=42425"]), null); // the reference needs two parts
  assert.equal(keyPortFromTxt(["ip=1.2.3.4;p=0"]), null);

  const bare = formatPq1Label(hash);
  const b = interpretNames(
    { host: "txt.example.org", chain: [`${bare}.example.org`], addresses: ["192.0.2.7"] },
    1,
  );
  const missing = interpretPorts(b.result, b.findings!, { crypto: ["p=42424"], key: [] });
  assert.equal(missing.result.verdict, "fail");
  assert.equal(missing.result.exit, EXIT.dns);
  assert.match(missing.result.cause!, /ks\..*missing or malformed: reference clients give up/);

  const noLabel = interpretNames({ host: "a.example.org", chain: [], addresses: ["1.2.3.4"] }, 1);
  assert.equal(noLabel.result.exit, EXIT.dns);
  assert.match(noLabel.result.cause!, /carries no pq1 label/);
  const noA = interpretNames({ host: "a.example.org", chain: [], addresses: [] }, 1);
  assert.match(noA.result.cause!, /no A record/);
});

Deno.test("check verdicts: each failure has its own exit status and cause", () => {
  const base: KeyDownload = {
    host: "192.0.2.7",
    port: 42425,
    complete: false,
    accepted: 0,
    rejected: 0,
    requests: 30,
    ms: 3000,
    limitSeconds: 20,
  };
  const silent = keysVerdict({ ...base, probed: [584] }, hash);
  assert.equal(silent.exit, EXIT.unreachable);
  assert.match(silent.cause!, /server is not running, or a firewall filters/);
  const moved = keysVerdict({ ...base, probed: [584], answeredOn: 584 }, hash);
  assert.equal(moved.exit, EXIT.wrongPort);
  assert.match(moved.cause!, /says key port 42425, the server listens on 584/);
  const other = keysVerdict({ ...base, rejected: 16, servedRoot: new Uint8Array(32) }, hash);
  assert.equal(other.exit, EXIT.keyMismatch);
  assert.match(other.cause!, new RegExp(formatPq1Label(new Uint8Array(32))));
  const ok = keysVerdict({ ...base, complete: true, accepted: 937, requests: 950 }, hash);
  assert.equal(ok.verdict, "pass");
  assert.equal(ok.data!.retransmissions, 13);
  const codes = [silent, moved, other].map((s) => s.exit);
  assert.equal(new Set(codes).size, codes.length);

  const report = finishReport("www.example.org", [ok, moved]);
  assert.equal(report.exit, EXIT.wrongPort);
  assert.match(formatReport(report), /FAILED at "long-term keys" \(exit 6\)/);
});

Deno.test("check ephemeral: the same key past its 30 s slot is stale; rotation is reported", () => {
  const key = (b: number) => ({
    x25519Pk: new Uint8Array(32).fill(b),
    sntrupPk: new Uint8Array(1158).fill(b),
    rttMs: 1,
  });
  const t = 1_800_000_010; // 10 s into a slot
  assert.equal(ephemeralVerdict(null, null, "h", 1, 5).exit, EXIT.ephemeral);
  const stale = ephemeralVerdict({ at: t, ...key(1) }, { at: t + 31, ...key(1) }, "h", 1, 5);
  assert.equal(stale.verdict, "fail");
  assert.equal(stale.exit, EXIT.ephemeral);
  assert.match(stale.cause!, /ephemeral keys stale/);
  const rotated = ephemeralVerdict({ at: t, ...key(1) }, { at: t + 31, ...key(2) }, "h", 1, 5);
  assert.equal(rotated.verdict, "pass");
  assert.match(rotated.details.join("\n"), /a new key 31\.0 s later \(a slot boundary passed/);
  const soon = ephemeralVerdict({ at: t, ...key(1) }, { at: t + 2, ...key(1) }, "h", 1, 5);
  assert.equal(soon.verdict, "pass");
  assert.match(soon.details.join("\n"), /10\.0 s of its 30 s gone; handshakes may use it for 110/);
  const skewed = ephemeralVerdict({ at: t, ...key(1) }, { at: t + 2, ...key(3) }, "h", 1, 5);
  assert.match(skewed.details.join("\n"), /its clock is not ours/);
});

/** The reply a host's kernel would send to `request` (addresses swapped, type/flags set). */
function reply(request: Uint8Array, edit: (p: Uint8Array) => void): Uint8Array {
  const p = request.slice();
  writeU32be(p, 12, 0xc0000207);
  writeU32be(p, 16, 0x0a2a0002);
  edit(p);
  return p;
}

Deno.test("check probes: well-formed ICMP echo and TCP SYN; only their answers match", () => {
  const echo = icmpEcho(0x1234, 7);
  assert.ok(ipv4HeaderChecksumOk(echo));
  assert.equal(internetChecksum(echo, 20), 0, "ICMP checksum");
  const answer = reply(echo, (p) => (p[20] = 0));
  const m = matchAnswer(answer, { kind: "icmp", id: 0x1234 }, new Set([7]));
  assert.deepEqual([m?.probe, m?.from, m?.to], [7, 0xc0000207, 0x0a2a0002]);
  assert.equal(matchAnswer(answer, { kind: "icmp", id: 0x1234 }, new Set([8])), null);
  assert.equal(matchAnswer(echo, { kind: "icmp", id: 0x1234 }, new Set([7])), null);
  assert.equal(
    matchAnswer(answer.subarray(0, 25), { kind: "icmp", id: 0x1234 }, new Set([7])),
    null,
  );

  const syn = tcpSyn(40000, 8080, 0xdeadbeef);
  const sum = pseudoHeaderSum(readU32be(syn, 12), readU32be(syn, 16), PROTO_TCP, syn.length - 20);
  assert.equal(internetChecksum(syn, 20, syn.length, sum), 0, "TCP checksum");
  const probe = { kind: "tcp" as const, port: 8080, sport: 40000 };
  const synAck = reply(syn, (p) => {
    writeU16be(p, 20, 8080);
    writeU16be(p, 22, 40000);
    writeU32be(p, 28, 0xdeadbeef + 1);
    p[33] = 0x12;
  });
  assert.match(matchAnswer(synAck, probe, new Set([0xdeadbeef]))!.what, /SYN-ACK.*open/);
  const rst = synAck.slice();
  rst[33] = 0x14;
  assert.match(matchAnswer(rst, probe, new Set([0xdeadbeef]))!.what, /RST.*closed/);
  const wrongAck = synAck.slice();
  writeU32be(wrongAck, 28, 5);
  assert.equal(matchAnswer(wrongAck, probe, new Set([0xdeadbeef])), null);
  assert.equal(readU16be(syn, 20), 40000);
});
