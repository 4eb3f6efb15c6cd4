/**
 * `vpm dump`: capture what crosses the daemon's TUN device, as a pcap file or as
 * one line per packet (or per before/after pair).
 *
 * Theory of operation. Start-up resolves everything before a packet is read: the
 * device (given, from the config, or the daemon's `stats`), the BPF filter (the
 * user's, and/or one built by a shortcut from the daemon's `services`,
 * `instances` and `flows`), then opens the capture and only then the output file,
 * so that a refused device or filter leaves no empty file behind.
 *
 * Running, each packet carries the kernel's timestamp and its length on the
 * wire (capture.ts) and goes to exactly one consumer: the pcap writer, the line
 * printer or the pairer. Output leaves in bursts: the first packet after a quiet moment
 * schedules one flush for when the current burst has been delivered
 * (setImmediate), like tcpdump -U, so a reader of `-w -` sees packets at once
 * without a write(2) per packet.
 *
 * Stopping: -c packets, -G seconds, SIGINT/SIGTERM, the reader of stdout going
 * away (EPIPE: a normal end, exit 0), or a write error (exit 1). With --pairs, a
 * -c stop first waits up to one pairing timeout for the partners of packets
 * already taken, taking only packets that complete a pair. Every way out goes
 * through `finish`, which stops the capture — draining what the kernel still
 * holds, except after -c, which wants no more — flushes and closes the output and
 * prints one summary line on stderr, once: the packets captured and the
 * capture's own count of what the filter passed and the kernel dropped because
 * the capture ring was full (pcap_stats), so that a loss is never silent.
 */

import { closeSync, openSync, writeSync } from 'node:fs';
import { VpmError } from '../base/errors.js';
import { controlRequest } from '../control/client.js';
import { ControlError } from '../control/protocol.js';
import { PCAP_SNAPLEN_IP } from '../pcap/format.js';
import { PcapWriter } from '../pcap/writer.js';
import type { ServiceView } from '../view/views.js';
import { type CaptureStats, LiveCapture } from './capture.js';
import {
  aidFilter,
  andFilters,
  FilterError,
  type FlowTuples,
  findService,
  flowFilter,
  type InstanceEndpoint,
  serviceFilter,
} from './filter.js';
import { Pairer } from './pairs.js';
import { describePacket, packetText, timeText } from './summary.js';

/** The TUN name of a config that does not set one (docs/configuration.md). */
export const DEFAULT_TUN = 'vpm0';

/** Everything `vpm dump` was asked to do, resolved and validated by the CLI. */
export interface DumpOptions {
  /** Device to capture on; null: the running daemon's TUN (else DEFAULT_TUN). */
  device: string | null;
  /** Where `device` came from, for the "no such device" hint. */
  deviceFrom: 'option' | 'config' | 'daemon';
  /** The daemon's control socket (shortcuts, --pairs, and the device when null). */
  socket: string;
  /** Stop after this many packets; 0: no limit. */
  count: number;
  /** Stop after this many seconds; 0: no limit. */
  seconds: number;
  /** pcap output: a file, '-' for stdout, null for text lines. */
  write: string | null;
  pairs: boolean;
  service: string | null;
  aid: string | null;
  flow: number | null;
  /** The user's BPF filter ('' for none). */
  filter: string;
  /** The capture ring (tcpdump -B), bytes; default 32 MiB. */
  bufferSize?: number;
  /** How long --pairs waits for a partner; default 200 ms. */
  pairTimeoutMs?: number;
}

export interface DumpResult {
  exitCode: number;
  captured: number;
}

/** Where output goes; process.stdout/stderr unless a test says otherwise. */
export interface DumpIo {
  stdout: NodeJS.WritableStream & { on(ev: 'error', cb: (e: Error) => void): unknown };
  stderr: NodeJS.WritableStream;
}

const PAIR_TICK_MS = 50;
/** Fewest milliseconds between two `flows` requests made for --pairs. */
const FLOWS_MIN_INTERVAL_MS = 20;

/** What stops `vpm dump` before it captures: a filter it cannot build, an unwritable file. */
class DumpError extends VpmError<'ERR_DUMP' | 'ERR_DUMP_FILTER'> {
  constructor(
    message: string,
    readonly exitCode: number,
    code: 'ERR_DUMP' | 'ERR_DUMP_FILTER' = 'ERR_DUMP',
  ) {
    super(code, message);
  }
}

/** Wall-clock milliseconds with sub-millisecond precision. */
const clock = () => performance.timeOrigin + performance.now();

async function ask(socket: string, cmd: string): Promise<unknown> {
  return controlRequest(socket, cmd);
}

/** The daemon's TUN name, or null when there is no daemon to ask. */
async function daemonTun(socket: string): Promise<string | null> {
  try {
    const s = (await ask(socket, 'stats')) as { tun?: { name?: unknown } };
    return typeof s.tun?.name === 'string' ? s.tun.name : null;
  } catch (e) {
    if (e instanceof ControlError) return null;
    throw e;
  }
}

function unknownCommand(e: unknown): boolean {
  return e instanceof ControlError && e.code === 'ERR_CONTROL_UNKNOWN_COMMAND';
}

/** `instances`, or [] from a daemon that does not have the command. */
async function instancesOf(socket: string): Promise<InstanceEndpoint[]> {
  try {
    return (await ask(socket, 'instances')) as InstanceEndpoint[];
  } catch (e) {
    if (unknownCommand(e)) return [];
    throw e;
  }
}

/** `services`, or what the flows tell of them from a daemon without the command. */
async function servicesOf(socket: string, flows: FlowTuples[]): Promise<ServiceView[]> {
  try {
    return (await ask(socket, 'services')) as ServiceView[];
  } catch (e) {
    if (!unknownCommand(e)) throw e;
    const seen = new Map<string, ServiceView>();
    for (const f of flows as (FlowTuples & { serviceName?: string })[]) {
      const i = f.service.lastIndexOf(':');
      seen.set(f.service, {
        name: f.serviceName ?? f.service,
        address: f.service.slice(0, i),
        port: Number(f.service.slice(i + 1)),
        protocol: 'tcp',
      });
    }
    return [...seen.values()];
  }
}

/** The BPF filter for the options: shortcuts and the user's filter, and-ed. */
export async function resolveFilter(o: DumpOptions): Promise<string> {
  const parts: string[] = [];
  if (o.service !== null || o.aid !== null || o.flow !== null) {
    const flows = (await ask(o.socket, 'flows')) as FlowTuples[];
    if (o.flow !== null) {
      const f = flows.find((x) => x.id === o.flow);
      if (!f)
        throw new FilterError(
          `--flow: no flow ${o.flow} in the daemon (vpm flows lists the current ones)`,
        );
      parts.push(flowFilter(f));
    }
    if (o.service !== null || o.aid !== null) {
      const instances = await instancesOf(o.socket);
      if (o.service !== null) {
        const svc = findService(await servicesOf(o.socket, flows), o.service);
        parts.push(serviceFilter(svc, instances, flows));
      }
      if (o.aid !== null) parts.push(aidFilter(o.aid, instances, flows));
    }
  }
  parts.push(o.filter);
  return andFilters(parts);
}

/** Run one capture to its end. Throws (with `exitCode`) only before capturing starts. */
export async function runDump(
  o: DumpOptions,
  io: DumpIo = { stdout: process.stdout, stderr: process.stderr },
): Promise<DumpResult> {
  let device = o.device;
  let hint = 'ip link lists the devices of this network namespace';
  if (device === null) {
    device = (await daemonTun(o.socket)) ?? DEFAULT_TUN;
    hint = 'is vpm running? use -i';
  } else if (o.deviceFrom === 'config') {
    hint = 'is vpm running for this config? use -i';
  }

  let filter: string;
  try {
    filter = await resolveFilter(o);
  } catch (e) {
    if (e instanceof FilterError) throw new DumpError(e.message, 2, e.code);
    throw e;
  }

  // --pairs needs the flows from the start; failing here is a clear error.
  const initialFlows = o.pairs ? ((await ask(o.socket, 'flows')) as FlowTuples[]) : [];

  const capture = LiveCapture.open(device, filter, {
    missingHint: hint,
    ...(o.bufferSize !== undefined ? { bufferSize: o.bufferSize } : {}),
  });

  let fd = -1;
  if (o.write !== null && o.write !== '-') {
    try {
      fd = openSync(o.write, 'w');
    } catch (e) {
      capture.close();
      throw new DumpError(`cannot write ${o.write}: ${(e as Error).message}`, 1);
    }
  }

  io.stderr.write(
    `vpm dump: listening on ${device}, link-type ${capture.linkName} (LINKTYPE ${capture.linkType}), ` +
      `snapshot length ${PCAP_SNAPLEN_IP} bytes${filter ? `, filter: ${filter}` : ''}\n`,
  );

  return new Promise<DumpResult>((resolve) => {
    let captured = 0;
    let draining = false;
    let finished = false;
    let stopping = false;
    let countReached = false;
    let readerGone = false;
    let exitCode = 0;
    let failure = '';
    let flushScheduled = false;
    let text = '';
    const timers: NodeJS.Timeout[] = [];

    const toStdout = (chunk: string | Uint8Array): void => {
      if (readerGone) return;
      io.stdout.write(chunk);
    };

    const fail = (message: string): void => {
      if (!failure) failure = message;
      exitCode = 1;
      finish();
    };

    let writer: PcapWriter | null = null;
    if (o.write !== null) {
      const sink =
        fd >= 0
          ? (bytes: Uint8Array) => {
              let off = 0;
              while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
            }
          : (bytes: Uint8Array) => toStdout(Buffer.from(bytes));
      writer = new PcapWriter(sink, { linkType: capture.linkType, snaplen: PCAP_SNAPLEN_IP });
      // The header at once: a reader of the pipe starts, and the file is valid from now on.
      try {
        writer.flush();
      } catch (e) {
        failure = `cannot write ${o.write}: ${(e as Error).message}`;
        exitCode = 1;
      }
    }

    const flush = (): void => {
      flushScheduled = false;
      try {
        writer?.flush();
      } catch (e) {
        fail(`cannot write ${o.write}: ${(e as Error).message}`);
        return;
      }
      if (text) {
        const t = text;
        text = '';
        toStdout(t);
      }
    };
    const scheduleFlush = (): void => {
      if (flushScheduled) return;
      flushScheduled = true;
      setImmediate(flush);
    };
    const line = (s: string): void => {
      text += `${s}\n`;
      scheduleFlush();
    };

    let pairer: Pairer | null = null;
    if (o.pairs) {
      let fetching = false;
      let lastFetch = Number.NEGATIVE_INFINITY;
      const fetchFlows = async (): Promise<void> => {
        if (fetching || !pairer) return;
        fetching = true;
        const wait = lastFetch + FLOWS_MIN_INTERVAL_MS - clock();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        const askedAt = clock();
        lastFetch = askedAt;
        try {
          const flows = (await ask(o.socket, 'flows')) as FlowTuples[];
          if (!finished) pairer.setFlows(flows, askedAt);
        } catch {
          pairer.flowsFailed();
        } finally {
          fetching = false;
        }
      };
      pairer = new Pairer({
        emit: line,
        requestFlows: () => void fetchFlows(),
        ...(o.pairTimeoutMs !== undefined ? { timeoutMs: o.pairTimeoutMs } : {}),
      });
      pairer.setFlows(initialFlows, clock());
      const p = pairer;
      timers.push(
        setInterval(() => {
          p.tick(clock());
          if (draining && p.outstanding === 0) finish();
        }, PAIR_TICK_MS),
      );
    }

    const onSignal = (): void => finish(true);
    const onStdoutError = (e: Error): void => {
      if ((e as NodeJS.ErrnoException).code === 'EPIPE') {
        readerGone = true;
        finish();
      } else {
        readerGone = true;
        fail(`cannot write to stdout: ${e.message}`);
      }
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    io.stdout.on('error', onStdoutError);

    /** `drain`: first take what the kernel still holds (a signal, -G); not after -c or an error. */
    function finish(drain = false): void {
      if (finished || stopping) return;
      if (drain) {
        stopping = true;
        capture.stop().then(
          (st) => {
            stopping = false;
            finalize(st);
          },
          () => {
            stopping = false;
            finalize(null);
          },
        );
        return;
      }
      finalize(capture.stats());
    }

    function finalize(st: CaptureStats | null): void {
      if (finished) return;
      finished = true;
      capture.close();
      for (const t of timers) clearTimeout(t);
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
      pairer?.flushAll();
      flush();
      if (fd >= 0) {
        try {
          closeSync(fd);
        } catch (e) {
          if (!failure) failure = `cannot write ${o.write}: ${(e as Error).message}`;
          exitCode = 1;
        }
      }
      const extra = pairer?.partnersTaken ?? 0;
      const more = extra > 0 ? `, ${extra} more to complete pairs` : '';
      const pairs = pairer ? ` (${pairer.pairs} pairs, ${pairer.unpaired} unpaired)` : '';
      const gone = readerGone && !failure ? '; the reader of stdout went away' : '';
      const unread =
        st && countReached ? Math.max(0, st.received - st.dropped - captured - extra) : 0;
      io.stderr.write(
        `${captured} packet${captured === 1 ? '' : 's'} captured${more}${pairs}${gone}; ${statsText(st)}` +
          `${unread > 0 ? `; ${unread} more arrived after -c ${o.count} was met and were not read` : ''}\n`,
      );
      if (failure) io.stderr.write(`vpm dump: ${failure}\n`);
      resolve({ exitCode, captured });
    }

    if (failure) {
      finish();
      return;
    }
    if (o.seconds > 0) timers.push(setTimeout(() => finish(true), o.seconds * 1000));

    capture.onPacket((data, now, orig) => {
      if (finished) return;
      if (draining) {
        pairer?.offerPartner(describePacket(data, capture.linkType), now);
        if (pairer?.outstanding === 0) finish();
        return;
      }
      captured++;
      if (writer) {
        try {
          writer.writeAt(data, now, orig);
        } catch (e) {
          fail(`cannot write ${o.write}: ${(e as Error).message}`);
          return;
        }
      } else if (pairer) {
        pairer.push(describePacket(data, capture.linkType), now);
      } else {
        line(`${timeText(now)} ${packetText(describePacket(data, capture.linkType))}`);
      }
      scheduleFlush();
      if (o.count > 0 && captured >= o.count && !stopping) {
        countReached = true;
        if (pairer && pairer.outstanding > 0) {
          draining = true;
          timers.push(setTimeout(finish, o.pairTimeoutMs ?? 200));
        } else {
          finish();
        }
      }
    });
  });
}

/** The capture's own counters, in words for the summary line. */
export function statsText(st: CaptureStats | null): string {
  if (st === null) return 'the capture could not tell what it received and dropped';
  const dropped =
    st.dropped === 0
      ? '0 dropped by the kernel'
      : `${st.dropped} DROPPED by the kernel (the capture ring was full: raise it with -B, in KiB)`;
  const ifd = st.ifDropped > 0 ? `, ${st.ifDropped} dropped by the interface` : '';
  return `${st.received} received by the filter, ${dropped}${ifd}`;
}
