// UDP throughput over loopback, 1200-byte datagrams, for the ways ffi/udp.ts could move them:
//
//   mmsg-js      recvmmsg/sendmmsg on headers and slots in a JS ArrayBuffer (what udp.ts uses)
//   mmsg-native  the same calls on a malloc'd area, packets copied in and out with memcpy
//   plain        one recvfrom/sendto per datagram
//   deno         Deno.listenDatagram (baseline; needs --unstable-net)
//
// Each round sends BATCH datagrams from one socket to another, then drains the receiver; send
// and receive phases are timed separately. Single-threaded, so "round trip" is the rate one
// JS thread sustains doing both sides' work.
//
//   deno run --allow-ffi=/lib/x86_64-linux-gnu/libc.so.6 --allow-net=127.0.0.1 --unstable-net \
//     bench/udp_bench.ts [seconds-per-mode]

import { libc } from "../ffi/libc.ts";
import { type Datagram, UdpSocket } from "../ffi/udp.ts";

const SIZE = 1200;
const BATCH = 64;
const SECONDS = Number(Deno.args[0] ?? 1.5);
const LOOPBACK = 0x7f000001;

interface Result {
  name: string;
  packets: number;
  lost: number;
  sendMs: number;
  recvMs: number;
  wallMs: number;
}

/** Runs rounds until the time is up: send(BATCH) then drain (which returns packets read). */
async function measure(
  name: string,
  send: () => Promise<number> | number,
  drain: (expected: number) => Promise<number> | number,
): Promise<Result> {
  const r: Result = { name, packets: 0, lost: 0, sendMs: 0, recvMs: 0, wallMs: 0 };
  const start = performance.now();
  const end = start + SECONDS * 1000;
  while (performance.now() < end) {
    const t0 = performance.now();
    const sent = await send();
    const t1 = performance.now();
    const got = await drain(sent);
    const t2 = performance.now();
    r.sendMs += t1 - t0;
    r.recvMs += t2 - t1;
    r.packets += got;
    r.lost += sent - got;
  }
  r.wallMs = performance.now() - start;
  return r;
}

function payloads(port: number): Datagram[] {
  return Array.from({ length: BATCH }, (_, i) => ({
    data: new Uint8Array(SIZE).fill(i),
    addr: LOOPBACK,
    port,
  }));
}

async function benchFfi(mode: "mmsg" | "plain"): Promise<Result> {
  const rx = UdpSocket.bind(0x7f000001, 0, { mode, batch: BATCH });
  const tx = UdpSocket.bind(0x7f000001, 0, { mode, batch: BATCH });
  const out = payloads(rx.localPort);
  try {
    return await measure(
      mode === "mmsg" ? "mmsg-js" : "plain",
      () => tx.sendBatch(out),
      (expected) => {
        let got = 0;
        // Loopback delivery completes inside sendmmsg, so the queue is full by now.
        for (let tries = 0; got < expected && tries < 1000; tries++) {
          const batch = rx.recvBatch();
          for (const d of batch) if (d.data.length === SIZE) got++;
        }
        return got;
      },
    );
  } finally {
    rx.close();
    tx.close();
  }
}

/** recvmmsg/sendmmsg on malloc'd memory, moving bytes with one memcpy per packet. */
async function benchNative(): Promise<Result> {
  const c = libc();
  const rx = UdpSocket.bind(0x7f000001, 0, { batch: BATCH });
  const tx = UdpSocket.bind(0x7f000001, 0, { batch: BATCH });
  const headerBytes = BATCH * (64 + 16 + 16);
  const dataAt = Math.ceil(headerBytes / 64) * 64;
  const stride = 2048;
  const area = (): { base: bigint; headers: Uint8Array; view: DataView } => {
    const base = BigInt(c.malloc(BigInt(dataAt + BATCH * stride)));
    if (base === 0n) throw new Error("malloc failed");
    const headers = new Uint8Array(headerBytes);
    const view = new DataView(headers.buffer);
    for (let i = 0; i < BATCH; i++) {
      const h = i * 64;
      const iov = BATCH * 64 + i * 16;
      const nameOff = BATCH * 80 + i * 16;
      view.setBigUint64(h, base + BigInt(nameOff), true);
      view.setUint32(h + 8, 16, true);
      view.setBigUint64(h + 16, base + BigInt(iov), true);
      view.setBigUint64(h + 24, 1n, true);
      view.setBigUint64(iov, base + BigInt(dataAt + i * stride), true);
      view.setBigUint64(iov + 8, BigInt(stride), true);
      view.setUint16(nameOff, 2, true);
    }
    c.copyToNative(base, headers, BigInt(headerBytes));
    return { base, headers, view };
  };
  const rxArea = area();
  const txArea = area();
  const port = rx.localPort;
  const out = payloads(port);
  const slots = Array.from({ length: BATCH }, () => new Uint8Array(stride));
  try {
    return await measure(
      "mmsg-native",
      () => {
        const { base, headers, view } = txArea;
        for (let i = 0; i < BATCH; i++) {
          const d = out[i].data;
          c.copyToNative(base + BigInt(dataAt + i * stride), d, BigInt(d.length));
          view.setUint32(BATCH * 64 + i * 16 + 8, d.length, true);
          const nameOff = BATCH * 80 + i * 16;
          view.setUint16(nameOff + 2, port, false);
          view.setUint32(nameOff + 4, LOOPBACK, false);
        }
        c.copyToNative(base, headers, BigInt(headerBytes));
        const n = c.sendmmsgAt(tx.fd, base, BATCH, 0x40);
        return Math.max(n, 0);
      },
      (expected) => {
        const { base, headers, view } = rxArea;
        let got = 0;
        for (let tries = 0; got < expected && tries < 1000; tries++) {
          const n = c.recvmmsgAt(rx.fd, base, BATCH, 0x40, null);
          if (n <= 0) continue;
          c.copyFromNative(headers, base, BigInt(headerBytes));
          for (let i = 0; i < n; i++) {
            const len = view.getUint32(i * 64 + 56, true);
            c.copyFromNative(slots[i], base + BigInt(dataAt + i * stride), BigInt(len));
            view.setUint32(i * 64 + 8, 16, true);
            if (len === SIZE) got++;
          }
          c.copyToNative(base, headers, BigInt(BATCH * 64)); // restore msg_namelen
        }
        return got;
      },
    );
  } finally {
    c.free(rxArea.base);
    c.free(txArea.base);
    rx.close();
    tx.close();
  }
}

async function benchDeno(): Promise<Result | string> {
  const listen = (Deno as unknown as {
    listenDatagram?: (o: { transport: "udp"; hostname: string; port: number }) => Deno.DatagramConn;
  }).listenDatagram;
  if (typeof listen !== "function") {
    return "Deno.listenDatagram unavailable (run with --unstable-net)";
  }
  const rx = listen({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const tx = listen({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const to = rx.addr as Deno.NetAddr;
  const data = new Uint8Array(SIZE).fill(7);
  const buf = new Uint8Array(65536);
  try {
    return await measure(
      "deno",
      async () => {
        for (let i = 0; i < BATCH; i++) await tx.send(data, to);
        return BATCH;
      },
      async (expected) => {
        let got = 0;
        while (got < expected) {
          // A lost datagram would hang receive(): give up on the round after 200 ms.
          let timer: ReturnType<typeof setTimeout> | undefined;
          const timeout = new Promise<null>((res) => timer = setTimeout(() => res(null), 200));
          const r = await Promise.race([rx.receive(buf), timeout]);
          clearTimeout(timer);
          if (r === null) break;
          if (r[0].length === SIZE) got++;
        }
        return got;
      },
    );
  } finally {
    rx.close();
    tx.close();
  }
}

function row(r: Result): string {
  const kpps = (n: number, ms: number) => (n / ms).toFixed(0).padStart(7);
  return `${r.name.padEnd(12)} send ${kpps(r.packets + r.lost, r.sendMs)} kpps   recv ${
    kpps(r.packets, r.recvMs)
  } kpps   round trip ${kpps(r.packets, r.wallMs)} kpps   ${
    ((r.packets * SIZE * 8) / (r.wallMs * 1e6)).toFixed(2)
  } Gbit/s   lost ${r.lost}`;
}

if (import.meta.main) {
  console.log(
    `UDP over 127.0.0.1, ${SIZE}-byte datagrams, batches of ${BATCH}, ${SECONDS}s per mode`,
  );
  for (const run of [() => benchFfi("mmsg"), benchNative, () => benchFfi("plain"), benchDeno]) {
    const r = await run();
    console.log(typeof r === "string" ? `deno         ${r}` : row(r));
  }
}
