// The TUN device a daemon starts with: created with the kernel's segmentation offloads (large TCP
// and UDP segments in, see lib/core/offload.ts), given its address and MTU, and closed by the
// daemon's cleanup (the kernel removes the interface with its last descriptor).

import { ipv4ToNumber } from "../core/ip.ts";
import type { Cleanup } from "./cleanup.ts";
import { TunDevice } from "../../ffi/tun.ts";
import { configureInterface } from "../../ffi/rtnetlink.ts";

export interface InterfaceOptions {
  /** The name, or a pattern like pqc%d. */
  interfaceName: string;
  tunAddress: string;
  prefix: number;
  mtu: number;
}

export async function openInterface(opts: InterfaceOptions, cleanup: Cleanup): Promise<TunDevice> {
  const tun = TunDevice.open(opts.interfaceName, { offload: true });
  cleanup.add(() => tun.close());
  await configureInterface(tun.name, {
    address: ipv4ToNumber(opts.tunAddress),
    prefix: opts.prefix,
    mtu: opts.mtu,
  });
  return tun;
}
