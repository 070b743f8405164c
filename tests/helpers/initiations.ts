// Valid pq1 initiations made here, as a client would make them, for tests and the load generator:
// the McEliece encapsulation to the server's long-term key, a fresh X25519 key, the sntrup761
// encapsulation to one of the server's ephemeral keys, and the session that results.

import { initiate } from "../../lib/core/handshake.ts";
import { x25519PublicKey } from "../../lib/core/crypto.ts";
import { TunnelSession } from "../../lib/core/session.ts";
import type { Encapsulator, Kem } from "../../wasm/kem.ts";
import { wipe } from "../../lib/core/bytes.ts";
import { internetChecksum } from "../../lib/core/ip.ts";

export interface ServerPublicKeys {
  x25519Pk: Uint8Array;
  ephemeralX25519Pk: Uint8Array;
  ephemeralSntrupPk: Uint8Array;
}

export interface PreparedInitiation {
  message: Uint8Array;
  /** The initiator's session: seal the 0-RTT packets with it. */
  session: TunnelSession;
}

/** An initiation and what it derives; the caller owns both roots (and erases them). */
export interface InitiationParts {
  message: Uint8Array;
  tid: Uint8Array;
  /** Initiator-to-responder root: what the initiator sends with. */
  i2r: Uint8Array;
  /** Responder-to-initiator root: what it receives with. */
  r2i: Uint8Array;
}

/** One initiation with a fresh ciphertext each time, and the roots of its session. */
export function makeInitiation(
  mceliece: Encapsulator,
  sntrup: Kem,
  server: ServerPublicKeys,
): InitiationParts {
  const mc = mceliece.encapsulate();
  const sn = sntrup.encapsulate(server.ephemeralSntrupPk);
  const sk = crypto.getRandomValues(new Uint8Array(32));
  const r = initiate({
    mcelieceCt: mc.ciphertext,
    mcelieceSs: mc.sharedSecret,
    clientX25519Sk: sk,
    clientX25519Pk: x25519PublicKey(sk),
    serverStaticX25519Pk: server.x25519Pk,
    serverEphemeralX25519Pk: server.ephemeralX25519Pk,
    sntrupCt: sn.ciphertext,
    sntrupSs: sn.sharedSecret,
  });
  wipe(sk, mc.sharedSecret, sn.sharedSecret);
  return r;
}

/** One initiation with a fresh ciphertext each time. */
export function prepareInitiation(
  mceliece: Encapsulator,
  sntrup: Kem,
  server: ServerPublicKeys,
  /** The session clock (seconds) at which the session starts. */
  now = 0,
): PreparedInitiation {
  const r = makeInitiation(mceliece, sntrup, server);
  return { message: r.message, session: TunnelSession.create(r.tid, r.i2r, r.r2i, now) };
}

/** An initiation-shaped datagram with random contents: costs a decapsulation, opens nothing. */
export function randomInitiation(): Uint8Array {
  const m = crypto.getRandomValues(new Uint8Array(1299));
  m[0] = 0x01;
  m[1] = 0x00;
  // A c0 with padding bits set is refused by the KEM at once; keep it well-formed.
  m[2 + 193] &= 0x07;
  return m;
}

/**
 * An ICMP echo request (28 bytes, valid checksums) from `src` to `dst`: the 0-RTT packet whose
 * answer proves a tunnel works end to end. The server rewrites the source to the client's
 * internal address.
 */
export function icmpEcho(src: number, dst: number, id: number, seq: number): Uint8Array {
  const p = new Uint8Array(28);
  const v = new DataView(p.buffer);
  p[0] = 0x45;
  v.setUint16(2, 28);
  v.setUint16(4, id & 0xffff);
  p[8] = 64;
  p[9] = 1;
  v.setUint32(12, src >>> 0);
  v.setUint32(16, dst >>> 0);
  v.setUint16(10, internetChecksum(p, 0, 20));
  p[20] = 8;
  v.setUint16(24, id & 0xffff);
  v.setUint16(26, seq & 0xffff);
  v.setUint16(22, internetChecksum(p, 20, 28));
  return p;
}
