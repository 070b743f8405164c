// The server's crypto port as two sockets in one SO_REUSEPORT group, sorted by the kernel:
// handshake initiations (first byte 0x01) go to a socket of their own, everything else (tunnel
// packets, cookies, junk) to the tunnel socket. A flood of 1299-byte initiations then fills only
// its own receive buffer: the kernel sheds the excess there, and the tunnel packets of live
// clients, and the 0-RTT packets behind the initiations that were admitted, never queue behind
// it (issue 8: at 5x the capacity, ~1/3 of all datagrams were dropped by a shared, full buffer).
// Both sockets are handled by the same code, so a kernel without the steering program only
// loses the separation, never a packet.

import { MSG_INITIATION } from "../core/constants.ts";
import { type BpfInstruction, UdpSocket } from "../../ffi/udp.ts";
import type { KemBackendName } from "../runtime/kem_backend.ts";

/** Classic BPF opcodes (linux/filter.h). */
const BPF_LD_B_ABS = 0x30;
const BPF_JEQ_K = 0x15;
const BPF_RET_K = 0x06;

/** The members' indices in the group: the order they were bound in. */
const TUNNEL_INDEX = 0;
const INITIATION_INDEX = 1;

/**
 * Payload byte 0 is 0x01: the initiation socket; anything else, or an empty payload (the load
 * fails and the program returns 0): the tunnel socket.
 */
export const STEER_INITIATIONS: readonly BpfInstruction[] = [
  { code: BPF_LD_B_ABS, jt: 0, jf: 0, k: 0 },
  { code: BPF_JEQ_K, jt: 0, jf: 1, k: MSG_INITIATION >> 8 },
  { code: BPF_RET_K, jt: 0, jf: 0, k: INITIATION_INDEX },
  { code: BPF_RET_K, jt: 0, jf: 0, k: TUNNEL_INDEX },
];

/**
 * Initiations waiting in the kernel, by KEM backend. While the handshake queue is full the
 * server leaves this socket unread (ServerDevice.initiationRoom) and the kernel sheds what does
 * not fit, so under overload this buffer is a part of the queue that admitted handshakes wait
 * in, in front of the 512 of the device's own: it holds a few hundredths of a second of the
 * backend's work, never more (at 512 KiB, 455 initiations, the median wait at 5x grew by ~0.1 s).
 * A 1299-byte initiation costs 2304 bytes of accounting, and the kernel doubles the request.
 * Native (~3000 handshakes/s on 2 cores): 128 KiB, 113 initiations, ~40 ms, still room for the
 * packet thread to be off its core a while at capacity. WebAssembly (~23/s): 8 KiB, 7, ~0.3 s.
 */
export const INITIATION_BUFFER_BYTES = { native: 128 << 10, wasm: 8 << 10 };

export interface CryptoPort {
  tunnel: UdpSocket;
  /** null: one socket takes everything (the kernel refused the steering program). */
  initiations: UdpSocket | null;
}

/** Binds the crypto port (`port` 0: a free one, the same for both sockets). */
export function bindCryptoPort(addr: number, port: number, maxDatagram: number): CryptoPort {
  const tunnel = UdpSocket.bind(addr, port, { maxDatagram, reusePort: true });
  try {
    // The program first: until the second member joins, an index past the group's end leaves
    // every datagram to the one socket, so none is sorted into a socket that may yet be closed.
    if (!tunnel.steerReusePort(STEER_INITIATIONS)) return { tunnel, initiations: null };
    const initiations = UdpSocket.bind(addr, tunnel.localPort, {
      maxDatagram,
      reusePort: true,
      bufferBytes: INITIATION_BUFFER_BYTES.native, // fitInitiationBuffer shrinks it for WASM
      sendBufferBytes: 64 << 10, // it never sends: replies leave through the tunnel socket
    });
    return { tunnel, initiations };
  } catch (e) {
    tunnel.close();
    throw e;
  }
}

/** Sizes the initiation socket's buffer for the KEM backend that runs (once it is known). */
export function fitInitiationBuffer(port: CryptoPort, backend: KemBackendName): void {
  port.initiations?.setReceiveBuffer(INITIATION_BUFFER_BYTES[backend]);
}
