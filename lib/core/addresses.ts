// Internal tunnel addresses: one per peer, from the TUN subnet, reused once freed.

import { prefixMask } from "./ip.ts";

export class AddressPool {
  readonly network: number;
  readonly broadcast: number;
  private readonly free: number[] = [];
  private next: number;
  private readonly inUse = new Set<number>();

  /** `own` is the TUN device's address, never handed out. */
  constructor(readonly own: number, readonly prefix: number) {
    if (prefix < 8 || prefix > 30) throw new Error("prefix length must be from 8 to 30");
    const mask = prefixMask(prefix);
    this.network = (own & mask) >>> 0;
    this.broadcast = (this.network | (~mask >>> 0)) >>> 0;
    this.next = this.network + 1;
  }

  contains(addr: number): boolean {
    return addr > this.network && addr < this.broadcast;
  }

  /** A free address, or null when the subnet is exhausted. */
  allocate(): number | null {
    let addr = this.free.pop();
    while (addr === undefined && this.next < this.broadcast) {
      const candidate = this.next++;
      if (candidate !== this.own) addr = candidate;
    }
    if (addr === undefined) return null;
    this.inUse.add(addr);
    return addr;
  }

  release(addr: number): void {
    if (this.inUse.delete(addr)) this.free.push(addr);
  }

  get used(): number {
    return this.inUse.size;
  }

  /** Addresses it can hand out in all: the subnet's, less its network, broadcast and own. */
  get size(): number {
    return this.broadcast - this.network - 2;
  }
}
