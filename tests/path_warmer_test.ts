// The data path's warm-up (issue 11: a slow exchange found the path's code and data cold): the
// dummy packets really go through seal, open and translate, also after the dummy session pair
// is renewed; and packetLoop runs the warm-up only while hot, never once it has parked (an
// idle tunnel costs no CPU). Over a real socket pair.

import assert from "node:assert/strict";
import { libc } from "../ffi/libc.ts";
import { installAeadBackend } from "../lib/runtime/aead_backend.ts";
import { packetLoop } from "../lib/runtime/packet_loop.ts";
import { DataPathWarmer } from "../lib/runtime/path_warmer.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const MSG_DONTWAIT = 0x40;

installAeadBackend();

Deno.test("every dummy packet is sealed, opened and written, across pair renewals", () => {
  for (const finishesChecksums of [false, true]) {
    const warmer = new DataPathWarmer(finishesChecksums);
    try {
      for (let i = 0; i < 10_000; i++) warmer.warm(); // > 2 pairs of 4096 packets
      assert.deepStrictEqual(warmer.delivered, 10_000);
    } finally {
      warmer.close();
    }
  }
});

Deno.test("packetLoop warms while hot after a packet, and not once parked", async () => {
  const fds = new Int32Array(2);
  const r = libc().socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, new Uint8Array(fds.buffer));
  if (r < 0) throw new Error("socketpair failed");
  const byte = new Uint8Array(1);
  let warms = 0;
  let stop = false;
  const source = {
    fd: fds[0],
    drain: () => {
      let n = 0;
      while (Number(libc().recv(fds[0], byte, 1n, MSG_DONTWAIT)) > 0) n++;
      return n;
    },
  };
  const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));
  const loop = packetLoop("warm-test", () => !stop, [source], {
    hotMs: 60,
    warm: () => void warms++,
  });
  try {
    await sleep(50);
    assert.deepStrictEqual(warms, 0, "never warmed before any traffic");
    libc().send(fds[1], byte, 1n, MSG_DONTWAIT);
    await sleep(40);
    const hot = warms;
    assert.ok(hot >= 3, `warmed ${hot} times in 40 ms of a hot, quiet loop`);
    assert.ok(hot <= 40, `warmed ${hot} times in 40 ms: at most once a millisecond`);
    await sleep(100); // hotMs passed: parked
    const parked = warms;
    await sleep(100);
    assert.deepStrictEqual(warms, parked, "no warm-up while parked");
  } finally {
    stop = true;
    libc().send(fds[1], byte, 1n, MSG_DONTWAIT); // wakes the parked wait
    await loop;
    libc().close(fds[0]);
    libc().close(fds[1]);
  }
});
