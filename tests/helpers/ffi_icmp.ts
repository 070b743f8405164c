// Just enough IPv4/ICMP for the TUN tests: recognise an echo request and turn it into the reply.

function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i + 1 < bytes.length; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  if (bytes.length & 1) sum += bytes[bytes.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ipv4Dst(packet: Uint8Array): string {
  return Array.from(packet.subarray(16, 20)).join(".");
}

/** True for an IPv4 ICMP echo request addressed to `dst`. */
export function isEchoRequest(packet: Uint8Array, dst: string): boolean {
  if (packet.length < 28 || packet[0] >> 4 !== 4 || packet[9] !== 1) return false;
  const ihl = (packet[0] & 0xf) * 4;
  return packet.length >= ihl + 8 && packet[ihl] === 8 && ipv4Dst(packet) === dst;
}

/** The echo reply answering `request` (addresses swapped, checksums recomputed). */
export function echoReply(request: Uint8Array): Uint8Array {
  const p = request.slice();
  const ihl = (p[0] & 0xf) * 4;
  p.set(request.subarray(16, 20), 12);
  p.set(request.subarray(12, 16), 16);
  p[8] = 64; // TTL
  p[10] = p[11] = 0;
  const ipSum = checksum(p.subarray(0, ihl));
  p[10] = ipSum >> 8;
  p[11] = ipSum & 0xff;
  p[ihl] = 0; // echo reply
  p[ihl + 2] = p[ihl + 3] = 0;
  const icmpSum = checksum(p.subarray(ihl));
  p[ihl + 2] = icmpSum >> 8;
  p[ihl + 3] = icmpSum & 0xff;
  return p;
}
