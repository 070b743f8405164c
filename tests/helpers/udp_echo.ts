// A UDP echo server (for the soak test): every datagram to `<addr>:<port>` goes back to its
// sender unchanged.
//
//   deno run --unstable-net --allow-net tests/helpers/udp_echo.ts 0.0.0.0 6001

const [hostname, port] = Deno.args;
const sock = Deno.listenDatagram({ transport: "udp", hostname, port: Number(port) });
console.log(`echoing on ${hostname}:${port}`);
for await (const [data, from] of sock) {
  sock.send(data, from).catch(() => {});
}
