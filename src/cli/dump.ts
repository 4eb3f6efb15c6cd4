/**
 * `vpm dump`: capture on the daemon's TUN device into a pcap file (-w) or as one
 * line per packet; shortcuts build the filter for one service, AID or flow.
 * The capture itself lives in src/inspect/; this module only checks the options
 * (bad values exit 2, naming the value) and resolves the socket and device.
 */

import { statSync } from 'node:fs';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { DEFAULT_SOCKET } from './daemon-cmds.js';
import { UsageError } from './errors.js';

interface DumpFlags {
  interface?: string;
  count?: string;
  seconds?: string;
  write?: string;
  pairs?: boolean;
  service?: string;
  aid?: string;
  flow?: string;
  socket?: string;
  config?: string;
  bufferSize?: string;
}

/** setTimeout's longest delay, in whole seconds. */
const MAX_SECONDS = Math.floor(0x7fffffff / 1000);

export function positiveInt(flag: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1)
    throw new UsageError(`${flag}: "${v}" is not a positive integer`);
  return n;
}

export function positiveSeconds(flag: string, v: string): number {
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0) || n > MAX_SECONDS)
    throw new UsageError(
      `${flag}: "${v}" is not a number of seconds above 0 (at most ${MAX_SECONDS})`,
    );
  return n;
}

/**
 * `-c` is the packet count, as in tcpdump, though every other vpm command takes
 * the config file with it: a value that is no count but names an existing file
 * was meant as the config, and is refused with a hint rather than as a number.
 * (A count is a count even where a file of that name exists.)
 */
export function packetCount(v: string): number {
  if (!/^\d+$/.test(v) && statSync(v, { throwIfNoEntry: false })?.isFile() === true)
    throw new UsageError(
      `-c: "${v}" is a file, but -c is a packet count here, as in tcpdump; for the config file use --config ${v}`,
    );
  return positiveInt('-c', v);
}

function nonEmpty(flag: string, v: string | undefined): string | null {
  if (v === undefined) return null;
  if (v.trim() === '') throw new UsageError(`${flag}: the value is empty`);
  return v;
}

export function registerDump(program: Command): void {
  program
    .command('dump')
    .description(
      "capture packets on the daemon's TUN: to a pcap file (-w) for tcpdump/tshark/Wireshark, or one line each",
    )
    .argument('[filter...]', 'a BPF filter, as for tcpdump (e.g. "tcp port 9000")')
    .option('-i, --interface <name>', "capture on this device (default: the daemon's TUN)")
    .option('-c, --count <n>', 'stop after n packets')
    .option('-G, --seconds <s>', 'stop after s seconds')
    .option('-w, --write <file>', 'write a pcap file; "-" writes it to stdout (for tcpdump -r -)')
    .option('-B, --buffer-size <KiB>', 'the capture ring, in KiB as for tcpdump (default 32768)')
    .option('--pairs', 'print each TCP packet before and after translation on one line')
    .option('--service <name|vip:port>', 'only this virtual service: its VIP:port and real ports')
    .option('--aid <aid>', "only this AID: its instances' real ports and its flows' clients")
    .option('--flow <id>', 'only this flow (an id from vpm flows): both of its connections')
    .option('-s, --socket <path>', `control socket of the daemon (default ${DEFAULT_SOCKET})`)
    .option('--config <file>', 'take the control socket and the TUN name from this config file')
    .action(async (filterWords: string[], f: DumpFlags) => {
      const count = f.count === undefined ? 0 : packetCount(f.count);
      const seconds = f.seconds === undefined ? 0 : positiveSeconds('-G', f.seconds);
      const bufferKiB = f.bufferSize === undefined ? null : positiveInt('-B', f.bufferSize);
      if (bufferKiB !== null && (bufferKiB < 64 || bufferKiB > 4 * 1024 * 1024))
        throw new UsageError(`-B: "${f.bufferSize}" KiB is not in 64..4194304`);
      const flow = f.flow === undefined ? null : Number(f.flow);
      if (f.flow !== undefined && !/^\d+$/.test(f.flow))
        throw new UsageError(`--flow: "${f.flow}" is not a flow id (a number from vpm flows)`);
      const write = nonEmpty('-w', f.write);
      if (f.pairs && write !== null)
        throw new UsageError('--pairs prints text; it cannot be combined with -w');
      const iface = nonEmpty('-i', f.interface);
      const cfg = f.config ? loadConfig(f.config) : null;
      const socket = f.socket ?? cfg?.control.socket ?? DEFAULT_SOCKET;
      const device = iface ?? cfg?.tun.name ?? null;
      const { runDump } = await import('../inspect/dump.js');
      const r = await runDump({
        device,
        deviceFrom: iface !== null ? 'option' : cfg ? 'config' : 'daemon',
        socket,
        count,
        seconds,
        write,
        pairs: f.pairs === true,
        service: nonEmpty('--service', f.service),
        aid: nonEmpty('--aid', f.aid),
        flow,
        filter: filterWords.join(' ').trim(),
        ...(bufferKiB !== null ? { bufferSize: bufferKiB * 1024 } : {}),
      });
      process.exitCode = r.exitCode;
    });
}
