// The attacker's namespace of the lab attack tests, in either of two places:
//   on the path    the client's and the server's veth end in it, joined by a bridge that also
//                  holds the attacker's own address: it sees every datagram and can send from
//                  either side's address (tests/live_tunnel_attack_test.ts,
//                  tests/replay_attack_ns_test.ts);
//   beside it      its own veth to the server (198.18.1.0/24) and routes, so it reaches the
//                  server from addresses of its own (tests/flood_test.ts).

import { type Lab, removeNamespace, run, sleep } from "../lab/netns.ts";

/** The bridge ports toward the server and toward the client, in the attacker's namespace. */
export const SERVER_PORT_IF = "a-srv";
export const CLIENT_PORT_IF = "a-cli";

/** A fresh namespace `ns` (an old one of that name is removed first), its loopback up. */
export async function addNamespace(ns: string): Promise<void> {
  await removeNamespace(ns);
  await run(null, ["ip", "netns", "add", ns]);
  await run(null, ["ip", "-n", ns, "link", "set", "lo", "up"]);
}

/** Pings `to` from `ns` until it answers (the new link is up), or throws `what`. */
export async function waitForLink(ns: string, to: string, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await run(ns, ["ping", "-c", "1", "-W", "1", to], { check: false });
    if (r.code === 0) return;
    await sleep(100);
  }
  throw new Error(what);
}

/**
 * Puts namespace `ns` on the link: the client's and the server's veth now end in it (same names
 * and addresses on their side), joined by a bridge `br0` that holds `addr`. Run it before any
 * daemon binds the lab's addresses.
 */
export async function interposeAttacker(lab: Lab, ns: string, addr: string): Promise<void> {
  await addNamespace(ns);
  const a = (...args: string[]) => run(null, ["ip", "-n", ns, ...args]);
  await a("link", "add", "br0", "type", "bridge", "forward_delay", "0");
  await run(null, ["ip", "-n", lab.serverNs, "link", "del", lab.serverIf]); // and its peer
  const sides: [string, string, string, string][] = [
    [lab.serverNs, lab.serverIf, SERVER_PORT_IF, lab.serverAddr],
    [lab.clientNs, lab.clientIf, CLIENT_PORT_IF, lab.clientAddr],
  ];
  for (const [side, dev, port, sideAddr] of sides) {
    await run(null, [
      "ip",
      "-n",
      side,
      "link",
      "add",
      dev,
      "type",
      "veth",
      "peer",
      "name",
      port,
      "netns",
      ns,
    ]);
    await run(null, ["ip", "-n", side, "addr", "add", `${sideAddr}/${lab.prefixLen}`, "dev", dev]);
    await run(null, ["ip", "-n", side, "link", "set", dev, "up"]);
    await a("link", "set", port, "master", "br0");
    await a("link", "set", port, "up");
  }
  await a("addr", "add", `${addr}/${lab.prefixLen}`, "dev", "br0");
  await a("link", "set", "br0", "up");
  await waitForLink(
    lab.clientNs,
    lab.serverAddr,
    "the link through the attacker's bridge stays down",
  );
}

/**
 * Namespace `ns` beside the link: its own veth to the server (198.18.1.2, the server's end
 * 198.18.1.1), `sources` on its loopback, routed both ways. Returns `sources`.
 */
export async function addSideAttacker(
  lab: Lab,
  ns: string,
  sources: { addresses: string[]; routed: string },
): Promise<string[]> {
  await addNamespace(ns);
  await run(null, [
    "ip",
    "-n",
    lab.serverNs,
    "link",
    "add",
    "veth-atk",
    "type",
    "veth",
    "peer",
    "name",
    "veth-atk0",
    "netns",
    ns,
  ]);
  await run(null, ["ip", "-n", lab.serverNs, "addr", "add", "198.18.1.1/24", "dev", "veth-atk"]);
  await run(null, ["ip", "-n", lab.serverNs, "link", "set", "veth-atk", "up"]);
  await run(null, ["ip", "-n", ns, "addr", "add", "198.18.1.2/24", "dev", "veth-atk0"]);
  await run(null, ["ip", "-n", ns, "link", "set", "veth-atk0", "up"]);
  await run(null, ["ip", "-n", ns, "route", "add", "198.18.0.0/24", "via", "198.18.1.1"]);
  const batch = sources.addresses.map((a) => `addr add ${a}/32 dev lo`).join("\n") + "\n";
  const file = await Deno.makeTempFile({ prefix: "pqts-atk-addrs-" });
  try {
    await Deno.writeTextFile(file, batch);
    await run(ns, ["ip", "-batch", file]);
  } finally {
    await Deno.remove(file).catch(() => {});
  }
  await run(lab.serverNs, ["ip", "route", "add", sources.routed, "via", "198.18.1.2"]);
  await waitForLink(ns, lab.serverAddr, "the attacker's link stays down");
  return sources.addresses;
}

/** Removes the attacker's namespace (and with it its veth ends). */
export async function removeAttacker(ns: string): Promise<void> {
  await removeNamespace(ns);
}
