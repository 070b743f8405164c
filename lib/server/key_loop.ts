// The key server's share of the server's packet loop: requests are answered as they come, in
// batches (recvmmsg in, sendmmsg out), on the same hot loop as the tunnel, so a client's key
// download runs at the speed of the link rather than one thread hop per request.

import type { UdpSocket } from "../../ffi/udp.ts";
import type { PacketSource } from "../runtime/packet_loop.ts";
import { answerKeyRequest } from "../core/keyserver.ts";
import type { KeyTree } from "../core/keytree.ts";
import type { EphemeralKeyStore } from "../core/ephemeral.ts";
import type { DropCounters } from "../core/log.ts";

export function keyServerSource(
  sock: UdpSocket,
  tree: KeyTree,
  ephemeral: EphemeralKeyStore,
  wallClock: () => number,
  drops: DropCounters,
): PacketSource {
  return {
    fd: sock.fd,
    drain: () => {
      const got = sock.recvBatch();
      if (got.length === 0) return 0;
      const now = wallClock();
      for (const d of got) {
        const answer = answerKeyRequest(d.data, tree, ephemeral, now);
        if (answer.ok) sock.queue(answer.response, d.addr, d.port);
        else drops.count(`key-${answer.reason}`);
      }
      sock.flush();
      return got.length;
    },
  };
}
