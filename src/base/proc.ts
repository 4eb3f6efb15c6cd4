/**
 * Who a pid is: the process identity that survives pid reuse.
 *
 * A pid alone does not name a process for long: after the process exits, the
 * kernel hands the number to the next process that needs one. The pair (pid,
 * start time) does: field 22 of /proc/PID/stat, the time the process started
 * in clock ticks after boot, which the kernel never changes for a living
 * process and which a later process with the same pid cannot share (it starts
 * later). Whoever records a process to recognise it later (the registry of
 * `vpm exec` programs across a daemon restart) records both and asks
 * `sameProcess`.
 *
 * The stat line is "PID (COMM) STATE PPID ...": COMM, the command name, may
 * itself hold spaces and ')' (a program can name itself anything), so the
 * fields after it are counted from the last ')' of the line, never by
 * splitting the whole line.
 *
 * Pids are the reader's pid namespace's: a pid from another namespace (a
 * program in a container reports its own getpid()) names another process here.
 */

import { readFileSync } from 'node:fs';

/** State and start time of `pid`, or null when it does not exist (or /proc cannot be read). */
export function procStat(pid: number): { state: string; start: string } | null {
  if (!Number.isInteger(pid) || pid < 1) return null;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const close = stat.lastIndexOf(')');
  if (close < 0) return null;
  // After "COMM) ": field 3 (state) is rest[0], field 22 (starttime) is rest[19].
  const rest = stat.slice(close + 2).split(' ');
  const state = rest[0] ?? '';
  const start = rest[19] ?? '';
  if (state === '' || !/^[0-9]+$/.test(start)) return null;
  return { state, start };
}

/**
 * The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks
 * after boot, as its decimal text), or null when there is no such process.
 */
export function procStart(pid: number): string | null {
  return procStat(pid)?.start ?? null;
}

/**
 * Is `pid` still the process that had start time `start`: alive, not a zombie
 * (or dead and not yet reaped: states Z, X, x), and started at that time?
 */
export function sameProcess(pid: number, start: string): boolean {
  const st = procStat(pid);
  if (st === null) return false;
  if (st.state === 'Z' || st.state === 'X' || st.state === 'x') return false;
  return st.start === start;
}
