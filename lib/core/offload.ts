// TUN offloads: the kernel hands a TUN device opened with IFF_VNET_HDR large TCP (and UDP)
// segments up to 64 kB behind a virtio_net_hdr, and takes the same from us. The tunnel still
// carries one MTU-sized IP packet per tunnel packet, byte for byte: `splitFrame` cuts what the
// kernel gives us into the packets it would have sent itself (IP ids, lengths, TCP sequence
// numbers, flags, checksums), and `TcpCoalescer` joins in-order TCP segments that came out of the
// tunnel into one frame for a single write, as GRO does on a network card. Pure: bytes in, bytes
// out; nothing here throws on bad input.

import { internetChecksum, onesComplementSum, pseudoHeaderSum } from "./ip.ts";

/** struct virtio_net_hdr (without num_buffers): what TUNSETVNETHDRSZ leaves by default. */
export const VNET_HDR_BYTES = 10;
export const VNET_F_NEEDS_CSUM = 1;
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_UDP_L4 = 5;
export const GSO_ECN = 0x80;

const PROTO_TCP = 6;
const PROTO_UDP = 17;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_ACK = 0x10;
const TCP_CWR = 0x80;
/** Largest IPv4 packet: the total length is 16 bits. */
const MAX_IP_PACKET = 65535;
/** IPv4 header (with options) plus TCP header (with options) at most. */
const MAX_HEADERS = 60 + 60;

function u16le(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

function putU16(p: Uint8Array, o: number, v: number): void {
  p[o] = (v >>> 8) & 0xff;
  p[o + 1] = v & 0xff;
}

function readU32(p: Uint8Array, o: number): number {
  return ((p[o] << 24) | (p[o + 1] << 16) | (p[o + 2] << 8) | p[o + 3]) >>> 0;
}

function putU32(p: Uint8Array, o: number, v: number): void {
  p[o] = v >>> 24;
  p[o + 1] = (v >>> 16) & 0xff;
  p[o + 2] = (v >>> 8) & 0xff;
  p[o + 3] = v & 0xff;
}

function setIpChecksum(p: Uint8Array, hl: number): void {
  p[10] = 0;
  p[11] = 0;
  putU16(p, 10, internetChecksum(p, 0, hl));
}

/** Sets the TCP or UDP checksum of `p[hl:total]` from scratch. */
function setL4Checksum(p: Uint8Array, hl: number, total: number, proto: number, at: number) {
  p[at] = 0;
  p[at + 1] = 0;
  const pseudo = pseudoHeaderSum(readU32(p, 12), readU32(p, 16), proto, total - hl);
  let c = internetChecksum(p, hl, total, pseudo);
  if (c === 0 && proto === PROTO_UDP) c = 0xffff; // 0 is "no checksum" in UDP
  putU16(p, at, c);
}

/**
 * Finishes a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field at
 * `start + offset` holds the pseudo-header sum, the rest is summed from `start` to the end.
 */
export function completeChecksum(p: Uint8Array, start: number, offset: number): boolean {
  const at = start + offset;
  if (start >= p.length || at + 2 > p.length) return false;
  const c = ~onesComplementSum(p, start, p.length) & 0xffff;
  putU16(p, at, c === 0 ? 0xffff : c);
  return true;
}

export type SplitOutcome = { ok: true; packets: number } | { ok: false; reason: string };

/**
 * Cuts one frame read from a TUN device with IFF_VNET_HDR (header, then the packet) into IP
 * packets and hands each to `emit`. The packets are built in place inside `frame`, one after the
 * other, so each is valid only until `emit` returns: a consumer that keeps one copies it.
 */
export function splitFrame(frame: Uint8Array, emit: (packet: Uint8Array) => void): SplitOutcome {
  if (frame.length < VNET_HDR_BYTES) return { ok: false, reason: "vnet-short" };
  const flags = frame[0];
  const gsoType = frame[1] & ~GSO_ECN;
  const gsoSize = u16le(frame, 4);
  const p = frame.subarray(VNET_HDR_BYTES);
  if (gsoType === GSO_NONE) {
    if (flags & VNET_F_NEEDS_CSUM) {
      if (!completeChecksum(p, u16le(frame, 6), u16le(frame, 8))) {
        return { ok: false, reason: "vnet-bad-csum" };
      }
    }
    emit(p);
    return { ok: true, packets: 1 };
  }
  if (gsoType !== GSO_TCPV4 && gsoType !== GSO_UDP_L4) {
    return { ok: false, reason: "vnet-gso-unsupported" };
  }
  if (p.length < 20 || p[0] >> 4 !== 4) return { ok: false, reason: "vnet-gso-not-ipv4" };
  const hl = (p[0] & 0x0f) * 4;
  if (hl < 20 || (((p[6] << 8) | p[7]) & 0x3fff) !== 0) {
    return { ok: false, reason: "vnet-gso-bad-ip" };
  }
  const tcp = gsoType === GSO_TCPV4;
  if (p[9] !== (tcp ? PROTO_TCP : PROTO_UDP)) return { ok: false, reason: "vnet-gso-bad-l4" };
  if (hl + (tcp ? 20 : 8) > p.length) return { ok: false, reason: "vnet-gso-short" };
  const l4 = tcp ? (p[hl + 12] >> 4) * 4 : 8;
  const headers = hl + l4;
  if (l4 < (tcp ? 20 : 8) || headers > p.length || gsoSize === 0) {
    return { ok: false, reason: "vnet-gso-bad-l4" };
  }
  const payload = p.length - headers;
  const count = Math.max(1, Math.ceil(payload / gsoSize));
  if (headers + Math.min(payload, gsoSize) > MAX_IP_PACKET) {
    return { ok: false, reason: "vnet-gso-too-large" };
  }
  // The first packet's headers, kept aside: later packets' headers overwrite payload that has
  // already been emitted.
  const saved = headerScratch.subarray(0, headers);
  saved.set(p.subarray(0, headers));
  const id = (p[4] << 8) | p[5];
  const seq = tcp ? readU32(p, hl + 4) : 0;
  const tcpFlags = tcp ? p[hl + 13] : 0;
  for (let i = 0; i < count; i++) {
    const start = i * gsoSize;
    const len = Math.min(gsoSize, payload - start);
    const seg = p.subarray(start, start + headers + len);
    if (i > 0) seg.set(saved);
    const total = headers + len;
    putU16(seg, 2, total);
    putU16(seg, 4, (id + i) & 0xffff);
    setIpChecksum(seg, hl);
    if (tcp) {
      putU32(seg, hl + 4, (seq + start) >>> 0);
      let f = tcpFlags;
      if (i < count - 1) f &= ~(TCP_FIN | TCP_PSH);
      if (i > 0) f &= ~TCP_CWR;
      seg[hl + 13] = f;
      setL4Checksum(seg, hl, total, PROTO_TCP, hl + 16);
    } else {
      putU16(seg, hl + 4, 8 + len);
      setL4Checksum(seg, hl, total, PROTO_UDP, hl + 6);
    }
    emit(seg);
  }
  return { ok: true, packets: count };
}

const headerScratch = new Uint8Array(MAX_HEADERS);

/** A run of TCP segments of one flow, in sequence order, waiting to be written as one frame. */
interface Group {
  /** The first segment, whole: its headers lead the frame. */
  first: Uint8Array;
  /** The last segment (its window and PSH flag lead the frame). */
  last: Uint8Array;
  payloads: Uint8Array[];
  bytes: number;
  headers: number;
  segSize: number;
  lastLen: number;
  nextSeq: number;
  closed: boolean;
  /** The first segment's TCP checksum is only its pseudo-header sum. */
  partial: boolean;
}

/** Whether `p` may join a coalesced TCP frame: plain IPv4, ACK (and PSH) only, with data. */
function tcpHeaders(p: Uint8Array): number {
  if (p.length < 40 || p[0] !== 0x45 || p[9] !== PROTO_TCP) return 0;
  if ((((p[2] << 8) | p[3]) !== p.length) || (((p[6] << 8) | p[7]) & 0x3fff) !== 0) return 0;
  const thl = (p[32] >> 4) * 4;
  const headers = 20 + thl;
  if (thl < 20 || headers >= p.length) return 0; // no payload: ACKs stay as they are
  if ((p[33] & ~(TCP_ACK | TCP_PSH)) !== 0 || !(p[33] & TCP_ACK)) return 0;
  return headers;
}

/** The same TCP connection: addresses and ports. */
function sameConnection(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 12; i < 24; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Within one connection: same ACK, same IP fields and TCP options (the kernel's GRO rules). */
function sameHeaders(a: Uint8Array, b: Uint8Array, headers: number): boolean {
  if (a[1] !== b[1] || a[6] !== b[6] || a[8] !== b[8]) return false; // tos, DF, ttl
  for (let i = 28; i < 33; i++) if (a[i] !== b[i]) return false; // ack and data offset
  for (let i = 40; i < headers; i++) if (a[i] !== b[i]) return false; // options
  return true;
}

export interface CoalescerStats {
  /** Frames written, and the segments inside the coalesced ones. */
  frames: number;
  coalescedSegments: number;
}

/**
 * Joins in-order TCP segments of the same flow, as they come out of the tunnel, into frames of up
 * to 64 kB (virtio_net_hdr with GSO_TCPV4 and a partial checksum the kernel finishes). Everything
 * else, and the segments of a flow that cannot join, are written as single packets, in order
 * within each flow. Segments are referenced, not copied, until `flush`: they must stay valid
 * until then.
 */
export class TcpCoalescer {
  readonly stats: CoalescerStats = { frames: 0, coalescedSegments: 0 };
  readonly #groups: Group[] = [];
  readonly #frame = new Uint8Array(VNET_HDR_BYTES + MAX_IP_PACKET);

  constructor(private readonly write: (frame: Uint8Array) => void, readonly maxFlows = 16) {}

  /**
   * Takes one IP packet, its checksums complete or (`partial`, TCP only) its TCP checksum field
   * holding the pseudo-header sum, for the kernel to finish.
   */
  push(p: Uint8Array, partial = false): void {
    const headers = tcpHeaders(p);
    if (headers === 0) {
      // Another protocol, or a control segment: whatever of its flow waits goes first.
      this.flush();
      return this.#single(p, partial);
    }
    const seq = readU32(p, 24);
    const len = p.length - headers;
    const groups = this.#groups;
    for (let i = 0; i < groups.length; i++) {
      const g = groups[i];
      if (!sameConnection(g.first, p)) continue;
      // Same connection (at most one run each). Join when it continues the run with the same
      // headers; else the run is written first. (Keeping a second run per connection, e.g. when
      // the timestamp option ticks, let a later run be written before an earlier one: the
      // receiver saw reordering, and the sender retransmitted what had arrived.)
      const fits = !g.closed && g.headers === headers && sameHeaders(g.first, p, headers) &&
        seq === g.nextSeq && g.lastLen === g.segSize && len <= g.segSize &&
        headers + g.bytes + len <= MAX_IP_PACKET;
      if (fits) {
        g.payloads.push(p.subarray(headers));
        g.bytes += len;
        g.lastLen = len;
        g.last = p;
        g.nextSeq = (seq + len) >>> 0;
        g.closed = (p[33] & TCP_PSH) !== 0;
        return;
      }
      this.#emit(g);
      groups.splice(i, 1);
      break;
    }
    if (groups.length >= this.maxFlows) this.#emit(groups.shift()!);
    groups.push({
      first: p,
      last: p,
      payloads: [p.subarray(headers)],
      bytes: len,
      headers,
      segSize: len,
      lastLen: len,
      nextSeq: (seq + len) >>> 0,
      closed: (p[33] & TCP_PSH) !== 0,
      partial,
    });
  }

  /** Writes every waiting run. */
  flush(): void {
    const groups = this.#groups;
    for (const g of groups) this.#emit(g);
    groups.length = 0;
  }

  #single(p: Uint8Array, partial: boolean): void {
    const f = this.#frame;
    f.fill(0, 0, VNET_HDR_BYTES);
    if (partial && p.length > 0) {
      f[0] = VNET_F_NEEDS_CSUM;
      f[6] = (p[0] & 0x0f) * 4; // csum_start: the TCP header
      f[8] = 16; // csum_offset: TCP's checksum field
    }
    f.set(p, VNET_HDR_BYTES);
    this.stats.frames++;
    this.write(f.subarray(0, VNET_HDR_BYTES + p.length));
  }

  #emit(g: Group): void {
    if (g.payloads.length === 1) return this.#single(g.first, g.partial);
    const f = this.#frame;
    const h = g.headers;
    const total = h + g.bytes;
    f[0] = VNET_F_NEEDS_CSUM;
    f[1] = GSO_TCPV4;
    f[2] = h & 0xff;
    f[3] = h >> 8;
    f[4] = g.segSize & 0xff;
    f[5] = g.segSize >> 8;
    f[6] = 20; // csum_start: the TCP header
    f[7] = 0;
    f[8] = 16; // csum_offset: TCP's checksum field
    f[9] = 0;
    const p = f.subarray(VNET_HDR_BYTES, VNET_HDR_BYTES + total);
    p.set(g.first.subarray(0, h));
    let at = h;
    for (const d of g.payloads) {
      p.set(d, at);
      at += d.length;
    }
    putU16(p, 2, total);
    setIpChecksum(p, 20);
    // The window and PSH of the newest segment.
    p[33] = g.first[33] | (g.last[33] & TCP_PSH);
    p[34] = g.last[34];
    p[35] = g.last[35];
    // A partial checksum: the pseudo-header sum, which the kernel completes over the segment.
    putU16(p, 36, pseudoHeaderSum(readU32(p, 12), readU32(p, 16), PROTO_TCP, total - 20));
    this.stats.frames++;
    this.stats.coalescedSegments += g.payloads.length;
    this.write(f.subarray(0, VNET_HDR_BYTES + total));
  }
}
