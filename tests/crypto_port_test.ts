// lib/server/crypto_port.ts over 127.0.0.1 with real sockets: the kernel sorts initiations into
// their own socket, and a flood of them cannot push tunnel packets out of the tunnel socket.

import assert from "node:assert/strict";
import { UdpSocket } from "../ffi/udp.ts";
import { bindCryptoPort, fitInitiationBuffer } from "../lib/server/crypto_port.ts";
import { HANDSHAKE_BYTES } from "../lib/core/constants.ts";
import { rootOnly } from "./helpers/ffi_netns.ts";

const LOOPBACK = 0x7f000001;

/** Everything queued on `sock` now (first bytes as hex, for the messages). */
function drain(sock: UdpSocket): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (;;) {
    const batch = sock.recvBatch();
    if (batch.length === 0) return out;
    for (const d of batch) out.push(d.data.slice());
  }
}

async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, 50)); // loopback delivery is synchronous; margin only
}

function datagram(first: number[], length: number, fill: number): Uint8Array {
  const d = new Uint8Array(length).fill(fill);
  d.set(first);
  return d;
}

Deno.test("crypto port: initiations reach their own socket, everything else the tunnel socket", async () => {
  const port = bindCryptoPort(LOOPBACK, 0, 4096);
  const sender = UdpSocket.bind(LOOPBACK, 0);
  try {
    assert.ok(port.initiations, "the kernel refused the steering program");
    assert.equal(port.initiations.localPort, port.tunnel.localPort);
    const to = port.tunnel.localPort;
    const cases: { data: Uint8Array; initiation: boolean }[] = [
      { data: datagram([0x01, 0x00], HANDSHAKE_BYTES, 7), initiation: true },
      { data: datagram([0x01], 1, 0), initiation: true }, // wrong length: the device drops it
      { data: datagram([0x02, 0x00], 200, 9), initiation: false },
      { data: new TextEncoder().encode("pqccookE" + "x".repeat(200)), initiation: false },
      { data: new Uint8Array(0), initiation: false }, // the program's load fails: index 0
      { data: datagram([0x00, 0x01], 50, 1), initiation: false },
      { data: datagram([0xff], 1300, 1), initiation: false },
    ];
    for (const c of cases) assert.ok(sender.sendTo(c.data, LOOPBACK, to));
    await settle();
    const initiations = drain(port.initiations);
    const tunnel = drain(port.tunnel);
    const expect = (initiation: boolean) =>
      cases.filter((c) => c.initiation === initiation).map((c) => Array.from(c.data));
    assert.deepEqual(initiations.map((d) => Array.from(d)), expect(true));
    assert.deepEqual(tunnel.map((d) => Array.from(d)), expect(false));
  } finally {
    sender.close();
    port.tunnel.close();
    port.initiations?.close();
  }
});

Deno.test("crypto port: a flood of initiations fills only its own buffer", async () => {
  const port = bindCryptoPort(LOOPBACK, 0, 4096);
  const flooder = UdpSocket.bind(LOOPBACK, 0, { bufferBytes: 16 << 20 });
  const client = UdpSocket.bind(LOOPBACK, 0);
  try {
    assert.ok(port.initiations, "the kernel refused the steering program");
    const to = port.tunnel.localPort;
    // Nothing reads during the flood: far more initiations than the initiation socket holds
    // (~256 KiB of accounting), then tunnel packets behind them.
    const FLOOD = 20_000;
    const flood = datagram([0x01, 0x00], HANDSHAKE_BYTES, 0x5a);
    for (let i = 0; i < FLOOD; i++) {
      flooder.queue(flood, LOOPBACK, to), i % 64 === 63 && flooder.flush();
    }
    flooder.flush();
    const TUNNEL = 500;
    for (let i = 0; i < TUNNEL; i++) {
      assert.ok(client.sendTo(datagram([0x02, 0x00, i >> 8, i & 255], 140, 3), LOOPBACK, to));
    }
    await settle();
    const tunnel = drain(port.tunnel);
    const initiations = drain(port.initiations);
    console.log(
      `${FLOOD} initiations offered: ${initiations.length} queued, the rest shed by the kernel; ` +
        `tunnel packets ${tunnel.length}/${TUNNEL}`,
    );
    assert.equal(tunnel.length, TUNNEL, "tunnel packets were lost behind the flood");
    // What the kernel shed is counted for the server's log (SO_MEMINFO): every initiation sent
    // and not queued, and nothing at the tunnel socket.
    const sent = FLOOD - flooder.stats.sendFailures;
    assert.equal(port.initiations.kernelDrops(), sent - initiations.length);
    assert.equal(port.tunnel.kernelDrops(), 0);
    // The same flood at one socket of the same 4 MiB (what the server had before): the tunnel
    // packets behind it are lost, so the figure above is the steering's doing.
    const single = UdpSocket.bind(LOOPBACK, 0, { maxDatagram: 4096 });
    try {
      for (let i = 0; i < FLOOD; i++) {
        flooder.queue(flood, LOOPBACK, single.localPort);
        if (i % 64 === 63) flooder.flush();
      }
      flooder.flush();
      for (let i = 0; i < TUNNEL; i++) {
        client.sendTo(datagram([0x02, 0x00], 140, 3), LOOPBACK, single.localPort);
      }
      await settle();
      const kept = drain(single).filter((d) => d[0] === 0x02).length;
      console.log(`one shared socket: tunnel packets ${kept}/${TUNNEL}`);
      assert.ok(kept < TUNNEL / 2, `${kept}`);
    } finally {
      single.close();
    }
    tunnel.forEach((d, i) => assert.equal((d[2] << 8) | d[3], i));
    assert.ok(initiations.length > 0 && initiations.length < FLOOD / 4, `${initiations.length}`);
    assert.ok(initiations.every((d) => d[0] === 0x01));
  } finally {
    flooder.close();
    client.close();
    port.tunnel.close();
    port.initiations?.close();
  }
});

Deno.test("crypto port: with WebAssembly KEMs the kernel keeps only a few initiations", async () => {
  const port = bindCryptoPort(LOOPBACK, 0, 4096);
  const flooder = UdpSocket.bind(LOOPBACK, 0, { bufferBytes: 16 << 20 });
  try {
    assert.ok(port.initiations, "the kernel refused the steering program");
    const kept = (backend: "native" | "wasm") => {
      fitInitiationBuffer(port, backend);
      const flood = datagram([0x01, 0x00], HANDSHAKE_BYTES, 0x5a);
      for (let i = 0; i < 2000; i++) {
        flooder.queue(flood, LOOPBACK, port.tunnel.localPort);
        if (i % 64 === 63) flooder.flush();
      }
      flooder.flush();
      return settle().then(() => drain(port.initiations!).length);
    };
    // Left unread while the queue is full, the socket holds what is read once a slot frees:
    // ~0.3 s of WebAssembly handshakes (~23/s), ~40 ms of native ones (~3000/s).
    const wasm = await kept("wasm");
    const native = await kept("native");
    console.log(`initiations kept by the kernel: wasm ${wasm}, native ${native}`);
    assert.ok(wasm >= 2 && wasm <= 10, `${wasm}`);
    assert.ok(native > 10 * wasm, `${native}`); // 113
  } finally {
    flooder.close();
    port.tunnel.close();
    port.initiations?.close();
  }
});

Deno.test("crypto port: a port in use fails with the address in the message", () => {
  const taken = UdpSocket.bind(LOOPBACK, 0);
  try {
    assert.throws(() => bindCryptoPort(LOOPBACK, taken.localPort, 4096), /bind\(127\.0\.0\.1:/);
  } finally {
    taken.close();
  }
});

/** Another user's attempt to bind `port` on 127.0.0.1, with every sharing option set. */
const HIJACK = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    print("bound")
except OSError as e:
    print("refused", e.errno)
`;

Deno.test({
  name: "crypto port: another local user cannot bind the server's port and take its datagrams",
  ignore: rootOnly("crypto_port_test (another user's bind)"),
  async fn() {
    const port = bindCryptoPort(LOOPBACK, 0, 4096);
    try {
      const out = await new Deno.Command("setpriv", {
        args: [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          "/usr/bin/python3",
          "-c",
          HIJACK,
          String(port.tunnel.localPort),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const said = new TextDecoder().decode(out.stdout).trim();
      assert.equal(said, "refused 98", `${said}\n${new TextDecoder().decode(out.stderr)}`);
    } finally {
      port.tunnel.close();
      port.initiations?.close();
    }
  },
});
