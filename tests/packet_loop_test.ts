// SourceList's urgent sources (issue 11: the client's DNS answers are taken in the middle of a
// long tunnel batch): over real socket pairs, serveUrgent drains only the urgent sources that
// are readable, a removed one is not polled any more, and a round meets urgent sources first.
// A paused source (the server's initiation socket while its queue is full) is left unread.

import assert from "node:assert/strict";
import { libc } from "../ffi/libc.ts";
import { packetLoop, type PacketSource, SourceList } from "../lib/runtime/packet_loop.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const MSG_DONTWAIT = 0x40;

/** A socket pair whose first end is a source counting what it drains. */
function pairSource(urgent: boolean) {
  const fds = new Int32Array(2);
  const r = libc().socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, new Uint8Array(fds.buffer));
  if (r < 0) throw new Error("socketpair failed");
  const byte = new Uint8Array(1);
  const src = {
    fd: fds[0],
    urgent,
    drained: 0,
    drain(): number {
      let n = 0;
      while (Number(libc().recv(fds[0], byte, 1n, MSG_DONTWAIT)) > 0) n++;
      src.drained += n;
      return n;
    },
    poke(): void {
      libc().send(fds[1], byte, 1n, MSG_DONTWAIT);
    },
    close(): void {
      libc().close(fds[0]);
      libc().close(fds[1]);
    },
  };
  return src;
}

Deno.test("serveUrgent drains the readable urgent sources and nothing else", () => {
  const bulk = pairSource(false);
  const dns = pairSource(true);
  const quiet = pairSource(true);
  const list = new SourceList([bulk]);
  try {
    list.add(dns);
    list.add(quiet);
    assert.deepStrictEqual(list.serveUrgent(), 0, "nothing readable yet");
    bulk.poke();
    dns.poke();
    dns.poke();
    assert.deepStrictEqual(list.serveUrgent(), 2);
    assert.deepStrictEqual([bulk.drained, dns.drained, quiet.drained], [0, 2, 0]);
    assert.deepStrictEqual(bulk.drain(), 1, "the bulk source's packet waited for its round");
    list.remove(dns);
    dns.poke();
    assert.deepStrictEqual(list.serveUrgent(), 0, "a removed source is not polled");
    assert.deepStrictEqual(dns.drained, 2);
  } finally {
    list.close();
    for (const s of [bulk, dns, quiet]) s.close();
  }
});

Deno.test("urgent sources come first in a round, after the wake pair", () => {
  const a = pairSource(false);
  const b = pairSource(false);
  const u = pairSource(true);
  const list = new SourceList([a]);
  try {
    list.add(b);
    list.add(u);
    const order = list.list.slice(1) as PacketSource[];
    assert.deepStrictEqual(order, [u, a, b]);
  } finally {
    list.close();
    for (const s of [a, b, u]) s.close();
  }
});

Deno.test("a paused source stays unread, costs no spinning, and is drained once it resumes", async () => {
  const init = pairSource(false);
  const tunnel = pairSource(false);
  let paused = true;
  let rounds = 0;
  let stop = false;
  const pausable = { fd: init.fd, drain: () => init.drain(), paused: () => paused };
  for (let i = 0; i < 5; i++) init.poke();
  tunnel.poke();
  const loop = packetLoop("test", () => !stop, [pausable, tunnel], {
    maxBlockMs: 2,
    hotMs: 10_000, // stays hot: every wait is a timed poll that a readable fd would cut short
    work: () => (rounds++, false),
  });
  try {
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(tunnel.drained, 1, "the other source is served");
    assert.equal(init.drained, 0, "nothing read while paused");
    // A readable fd left in the poll set would end every wait at once: tens of thousands of
    // rounds in 100 ms. Out of the set, the loop waits its 2 ms a round.
    assert.ok(rounds < 500, `${rounds} rounds in 100 ms while paused`);
    paused = false;
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(init.drained, 5, "read once it resumed");
  } finally {
    stop = true;
    init.poke(); // ends the last wait
    await loop;
    init.close();
    tunnel.close();
  }
});
