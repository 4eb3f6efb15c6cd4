/**
 * The daemon's logger: pino JSON lines with a stable shape (every line has
 * `event`, see docs/inspection.md) on stdout; when stdout is a terminal, the
 * same lines rendered for people ("12:00:01 INFO  flow_refused  reason=...").
 */

import { type DestinationStream, type Logger, pino } from 'pino';
import type { LogLevel } from '../config/types.js';

const LEVELS: Record<number, string> = {
  10: 'TRACE',
  20: 'DEBUG',
  30: 'INFO ',
  40: 'WARN ',
  50: 'ERROR',
  60: 'FATAL',
};
const SKIP = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'event']);

/** Render one pino JSON line for a terminal. */
export function prettyLine(line: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const t = new Date(typeof o.time === 'number' ? o.time : Date.now());
  const hh = t.toTimeString().slice(0, 8);
  const fields = Object.entries(o)
    .filter(([k]) => !SKIP.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join(' ');
  return `${hh} ${LEVELS[o.level as number] ?? o.level} ${String(o.event ?? '-').padEnd(20)} ${String(o.msg ?? '')}${fields ? `  ${fields}` : ''}\n`;
}

export function createLogger(level: LogLevel, pretty = process.stdout.isTTY === true): Logger {
  const opts = { level, base: { pid: process.pid } };
  if (!pretty) return pino(opts);
  const dest: DestinationStream = {
    write(s: string) {
      for (const line of s.split('\n')) if (line) process.stdout.write(prettyLine(line));
    },
  };
  return pino(opts, dest);
}
