/**
 * The TUN device's own counters, kept by the kernel: what vpm's pipeline
 * counters cannot see. When vpm does not read fast enough, the kernel drops
 * packets in the TUN's transmit path (tun_net_xmit: its queue of txqueuelen
 * packets is full) and counts them only in the device's tx_dropped; they never
 * reach vpm's `packetsIn`. On a TUN, "tx" is toward vpm (the kernel transmits
 * to the reader: tx_packets are the packets vpm read) and "rx" is what vpm
 * wrote back.
 *
 * Read from /proc/self/net/dev, which lists the devices of the reading
 * process's network namespace (the daemon's), with fs/promises so the event
 * loop never waits for it. (/sys/class/net shows the namespace that mounted
 * /sys, which need not be the daemon's.)
 */

import { readFile } from 'node:fs/promises';

/** One device's counters, as /proc/net/dev names them (rx: written by vpm, tx: toward vpm). */
export interface DeviceCounters {
  name: string;
  rxPackets: number;
  rxBytes: number;
  rxErrors: number;
  rxDropped: number;
  rxFifo: number;
  txPackets: number;
  txBytes: number;
  txErrors: number;
  txDropped: number;
  txFifo: number;
}

export const PROC_NET_DEV = '/proc/self/net/dev';

/** The counters of `name` in the text of /proc/net/dev, or null if it is not listed. */
export function parseProcNetDev(text: string, name: string): DeviceCounters | null {
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0 || line.slice(0, colon).trim() !== name) continue;
    const f = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .map(Number);
    if (f.length < 16 || f.some((n) => !Number.isFinite(n))) return null;
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop fifo colls carrier compressed
    return {
      name,
      rxBytes: f[0]!,
      rxPackets: f[1]!,
      rxErrors: f[2]!,
      rxDropped: f[3]!,
      rxFifo: f[4]!,
      txBytes: f[8]!,
      txPackets: f[9]!,
      txErrors: f[10]!,
      txDropped: f[11]!,
      txFifo: f[12]!,
    };
  }
  return null;
}

/** The device's counters now, or null if they cannot be read (no such device, no /proc). */
export async function readDeviceCounters(
  name: string,
  file = PROC_NET_DEV,
): Promise<DeviceCounters | null> {
  try {
    return parseProcNetDev(await readFile(file, 'utf8'), name);
  } catch {
    return null;
  }
}
