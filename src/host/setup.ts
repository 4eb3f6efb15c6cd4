/**
 * Host network set-up for `vpm up`, and its exact undo.
 *
 * Theory of operation. The TUN device is created by the daemon and is not
 * persistent: it disappears with the daemon's file descriptor, and with it its
 * address, its routes and its per-device sysctls. What outlives a crash is:
 *   - the policy rules that steer replies from instance ports into the TUN, and
 *   - the global net.ipv4.ip_forward sysctl.
 * Each of those changes is appended to a journal (a JSON state file, written
 * before the change is made, so a crash between the two leaves at worst an undo
 * of something absent, which is harmless) and undone in reverse order on exit. A
 * later `vpm up` or `vpm down` that finds the journal of a dead daemon undoes it
 * first. Changes that were already in place (a rule that exists, a sysctl that
 * already has the value) are not journalled and not undone: vpm removes exactly
 * what it added.
 *
 * The recipe, for a TUN `vpm0` with address A, local-client address L, virtual
 * service addresses V…, instance ports P…, route table T and rule priority R:
 *   ip link set vpm0 mtu M txqueuelen Q; sysctl net.ipv6.conf.vpm0.disable_ipv6=1
 *   sysctl net.ipv4.conf.vpm0.{rp_filter=2, forwarding=1}
 *   ip addr add A/32 dev vpm0; ip link set vpm0 up
 *   ip route add V/32 dev vpm0 (each); ip route add L/32 dev vpm0
 *   ip route add default dev vpm0 table T
 *   ip rule add pref R from A ipproto tcp sport P lookup T (each port range)
 *   sysctl net.ipv4.ip_forward=1
 */

import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { HostError, run } from './run.js';
import { readSysctl, writeSysctl } from './sysctl.js';

export interface HostPlan {
  tunName: string;
  tunAddr: string;
  localClientAddr: string;
  mtu: number;
  txQueueLen: number;
  vips: readonly string[];
  /** Source-port ranges of instances whose replies go into the TUN. */
  replyPorts: readonly { lo: number; hi: number }[];
  routeTable: number;
  rulePriority: number;
  /**
   * Cooperative client side: the VIPs of services a peer serves, each with the
   * address of that peer. Packets vpm writes back towards them (VIP:p2) must leave
   * through the network, not the TUN again: they are routed by table routeTable+1,
   * which holds each VIP via the route to its peer, for packets arriving from the TUN.
   */
  peerVips?: readonly { vip: string; peer: string }[];
}

export type Change =
  | { kind: 'rule'; args: string[] }
  | { kind: 'route'; args: string[] }
  | { kind: 'sysctl'; key: string; old: string; value: string };

export interface Journal {
  pid: number;
  /**
   * Start time of `pid` (/proc/PID/stat field 22, clock ticks since boot): with the
   * pid it names one process, where a pid alone may since have been reused. Absent
   * in journals written before it was recorded.
   */
  pidStart?: string;
  tunName: string;
  started: string;
  changes: Change[];
}

export class HostSetup {
  private readonly journal: Journal;

  constructor(
    private readonly stateFile: string,
    tunName: string,
  ) {
    this.journal = {
      pid: process.pid,
      pidStart: procStat(process.pid)?.start,
      tunName,
      started: new Date().toISOString(),
      changes: [],
    };
  }

  private save(): void {
    mkdirSync(dirname(this.stateFile), { recursive: true, mode: 0o700 });
    const tmp = `${this.stateFile}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(this.journal, null, 2)}\n`, { mode: 0o600 });
    renameSync(tmp, this.stateFile);
  }

  /** Configure the host for the TUN (already created). On failure, undoes what it did and rethrows. */
  apply(plan: HostPlan): void {
    this.save();
    try {
      const dev = plan.tunName;
      // Per-device settings die with the device: not journalled.
      const devKey = (family: string, name: string) =>
        `net.${family}.conf.${dev.replace(/\./g, '/')}.${name}`;
      if (existsSync(`/proc/sys/net/ipv6/conf/${dev}`))
        writeSysctl(devKey('ipv6', 'disable_ipv6'), '1');
      // Packets written to the TUN carry the client's address as source, whose
      // route is not the TUN: loose reverse-path filtering lets them in without
      // touching the host-wide setting (the kernel uses max(all, device)).
      writeSysctl(devKey('ipv4', 'rp_filter'), '2');
      writeSysctl(devKey('ipv4', 'forwarding'), '1');
      run('ip', [
        'link',
        'set',
        'dev',
        dev,
        'mtu',
        String(plan.mtu),
        'txqueuelen',
        String(plan.txQueueLen),
      ]);
      run('ip', ['addr', 'replace', `${plan.tunAddr}/32`, 'dev', dev]);
      run('ip', ['link', 'set', 'dev', dev, 'up']);
      for (const vip of plan.vips) run('ip', ['route', 'replace', `${vip}/32`, 'dev', dev]);
      run('ip', ['route', 'replace', `${plan.localClientAddr}/32`, 'dev', dev]);
      run('ip', ['route', 'replace', 'default', 'dev', dev, 'table', String(plan.routeTable)]);
      for (const args of replyRules(plan)) this.addRule(args);
      if (plan.peerVips && plan.peerVips.length > 0) {
        const out = String(plan.routeTable + 1);
        for (const { vip, peer } of plan.peerVips) {
          // The way to the peer, as the host routes it without vpm.
          const r = JSON.parse(run('ip', ['-j', 'route', 'get', peer]))[0] as
            | { gateway?: string; dev?: string }
            | undefined;
          if (!r?.dev)
            throw new HostError(
              'ERR_HOST_COMMAND',
              `no route to peer ${peer} (ip route get ${peer})`,
            );
          const via = r.gateway ? ['via', r.gateway] : [];
          run('ip', ['route', 'replace', `${vip}/32`, ...via, 'dev', r.dev, 'table', out]);
          this.journal.changes.push({ kind: 'route', args: [`${vip}/32`, 'table', out] });
          this.save();
        }
        this.addRule(['pref', String(plan.rulePriority), 'iif', dev, 'lookup', out]);
      }
      this.setSysctl('net.ipv4.ip_forward', '1');
    } catch (e) {
      this.undo();
      throw e;
    }
  }

  /**
   * Bring the reply rules in line with a new plan (config reload): add the missing
   * ones, remove journalled ones that are no longer wanted.
   */
  updateReplyPorts(plan: HostPlan): void {
    const want = replyRules(plan);
    const wantKeys = new Set(want.map((a) => a.join(' ')));
    const keep: Change[] = [];
    for (const c of this.journal.changes) {
      if (c.kind === 'rule' && c.args.includes('sport') && !wantKeys.has(c.args.join(' '))) {
        if (ruleExists(c.args)) run('ip', ['rule', 'del', ...c.args]);
      } else {
        keep.push(c);
      }
    }
    this.journal.changes = keep;
    this.save();
    for (const args of want) this.addRule(args);
  }

  private addRule(args: string[]): void {
    if (ruleExists(args)) return;
    this.journal.changes.push({ kind: 'rule', args });
    this.save();
    run('ip', ['rule', 'add', ...args]);
  }

  private setSysctl(key: string, value: string): void {
    const old = readSysctl(key);
    if (old === value) return;
    this.journal.changes.push({ kind: 'sysctl', key, old, value });
    this.save();
    writeSysctl(key, value);
  }

  /** Undo every journalled change, newest first, and remove the state file. */
  undo(): void {
    undoJournal(this.journal);
    rmSync(this.stateFile, { force: true });
  }
}

function replyRules(plan: HostPlan): string[][] {
  return plan.replyPorts.map((r) => [
    'pref',
    String(plan.rulePriority),
    'from',
    plan.tunAddr,
    'ipproto',
    'tcp',
    'sport',
    r.lo === r.hi ? String(r.lo) : `${r.lo}-${r.hi}`,
    'lookup',
    String(plan.routeTable),
  ]);
}

function ruleExists(args: readonly string[]): boolean {
  // `ip rule show pref N` prints rules in a canonical form; compare on the parts we set.
  const prefIdx = args.indexOf('pref');
  const out = run('ip', ['rule', 'show', 'pref', args[prefIdx + 1]!]);
  const parts = ['from', 'iif', 'ipproto', 'sport', 'lookup']
    .filter((k) => args.includes(k))
    .map((k) => `${k} ${args[args.indexOf(k) + 1]}`);
  return out.split('\n').some((line) => parts.every((p) => line.includes(p)));
}

/** Undo a journal's changes, newest first. Errors are collected, not thrown halfway. */
export function undoJournal(j: Journal): string[] {
  const errors: string[] = [];
  for (let i = j.changes.length - 1; i >= 0; i--) {
    const c = j.changes[i]!;
    try {
      if (c.kind === 'rule') {
        if (ruleExists(c.args)) run('ip', ['rule', 'del', ...c.args]);
      } else if (c.kind === 'route') {
        try {
          run('ip', ['route', 'del', ...c.args]);
        } catch {
          // already gone (its device went away)
        }
      } else {
        writeSysctl(c.key, c.old);
      }
    } catch (e) {
      errors.push((e as Error).message);
    }
  }
  j.changes.length = 0;
  return errors;
}

export function readJournal(stateFile: string): Journal | null {
  if (!existsSync(stateFile)) return null;
  try {
    const j = JSON.parse(readFileSync(stateFile, 'utf8')) as Journal;
    if (!Array.isArray(j.changes)) throw new Error('no changes list');
    return j;
  } catch (e) {
    throw new HostError(
      'ERR_HOST_STATE',
      `state file ${stateFile} is unreadable: ${(e as Error).message}`,
    );
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** State and start time (fields 3 and 22) of /proc/PID/stat, or null when there is no such process. */
function procStat(pid: number): { state: string; start: string } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2, the command name, is in parentheses and may itself hold spaces and ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0] ?? '', start: rest[19] ?? '' };
  } catch {
    return null;
  }
}

/**
 * Is the daemon that wrote journal `j` still running? Its pid must be alive (not a
 * zombie) and, when the journal recorded it, have the same start time: a pid of a
 * crashed daemon may have been reused by any other process.
 */
export function journalOwnerAlive(j: Journal): boolean {
  if (!pidAlive(j.pid)) return false;
  const st = procStat(j.pid);
  if (st === null || st.state === 'Z' || st.state === 'X') return false;
  if (j.pidStart !== undefined) return st.start === j.pidStart;
  return isVpm(j.pid); // a journal without pidStart: the old, weaker test
}

/**
 * Remove what a dead daemon left behind (rules, ip_forward). Throws when the
 * journal's daemon is still running. Returns a description of what was undone.
 */
export function cleanStale(stateFile: string): string[] {
  const j = readJournal(stateFile);
  if (j === null) return [];
  if (j.pid !== process.pid && journalOwnerAlive(j)) {
    throw new HostError(
      'ERR_ALREADY_RUNNING',
      `vpm is already running for ${j.tunName} (pid ${j.pid}, state ${stateFile})`,
    );
  }
  const done = j.changes.map((c) =>
    c.kind === 'sysctl' ? `sysctl ${c.key}=${c.old}` : `ip ${c.kind} del ${c.args.join(' ')}`,
  );
  const errors = undoJournal(j);
  if (errors.length > 0)
    throw new HostError(
      'ERR_HOST_STALE',
      `could not undo stale state of ${stateFile}: ${errors.join('; ')}`,
    );
  rmSync(stateFile, { force: true });
  return done;
}

function isVpm(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('vpm');
  } catch {
    return false;
  }
}

export { HostError };
