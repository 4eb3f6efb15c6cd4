/** Facts about the machine a benchmark ran on, for the report: numbers mean little without them. */

import { readFileSync } from 'node:fs';
import os from 'node:os';

export interface MachineFacts {
  /** "model name" from /proc/cpuinfo (os.cpus() as a fallback). */
  cpuModel: string;
  /** "cpu family" / "model" from /proc/cpuinfo, e.g. "family 26 model 2", or "" if absent. */
  cpuId: string;
  /** Logical CPUs this process may see. */
  cores: number;
  /** Per-core L1d / L2 and shared L3 sizes from sysfs, e.g. "L1d 48K, L2 1024K, L3 32768K". */
  caches: string;
  /** Whether /proc/cpuinfo says this is a virtual machine ("hypervisor" flag). */
  virtualised: boolean;
  node: string;
  v8: string;
  kernel: string;
  /** 1-minute load average when the benchmark started: other work makes numbers noisy. */
  loadAvg1: number;
  /** ISO 8601, UTC. */
  date: string;
}

function cpuinfoField(text: string, name: string): string | null {
  const m = new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(text);
  return m ? m[1]!.trim() : null;
}

function readOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return fallback;
  }
}

function caches(): string {
  const parts: string[] = [];
  for (let i = 0; i < 8; i++) {
    const dir = `/sys/devices/system/cpu/cpu0/cache/index${i}`;
    const level = readOr(`${dir}/level`, '');
    if (level === '') break;
    const type = readOr(`${dir}/type`, '');
    if (type === 'Instruction') continue;
    parts.push(`L${level}${type === 'Data' ? 'd' : ''} ${readOr(`${dir}/size`, '?')}`);
  }
  return parts.join(', ');
}

export function machineFacts(now = new Date()): MachineFacts {
  const cpuinfo = readOr('/proc/cpuinfo', '');
  const family = cpuinfoField(cpuinfo, 'cpu family');
  const model = cpuinfoField(cpuinfo, 'model');
  const flags = cpuinfoField(cpuinfo, 'flags') ?? '';
  return {
    cpuModel: cpuinfoField(cpuinfo, 'model name') ?? os.cpus()[0]?.model ?? 'unknown',
    cpuId: family !== null && model !== null ? `family ${family} model ${model}` : '',
    cores: os.availableParallelism(),
    caches: caches(),
    virtualised: /\bhypervisor\b/.test(flags),
    node: process.version,
    v8: process.versions.v8,
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAvg1: os.loadavg()[0] ?? 0,
    date: now.toISOString(),
  };
}

/** One line per fact, "label: value", for the text report and the docs. */
export function machineLines(m: MachineFacts): [string, string][] {
  return [
    [
      'CPU',
      `${m.cpuModel}${m.cpuId ? ` (${m.cpuId})` : ''}${m.virtualised ? ', virtual machine' : ''}`,
    ],
    ['cores', `${m.cores} logical`],
    ['caches', m.caches || 'unknown'],
    ['Node', `${m.node} (V8 ${m.v8})`],
    ['kernel', m.kernel],
    ['load average at start', m.loadAvg1.toFixed(2)],
    ['date', m.date],
  ];
}
