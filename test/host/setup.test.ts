/**
 * HostSetup's reply rules and journal, against a stand-in ip(8): a script first
 * on PATH that keeps `ip rule` state in a file, logs each call, checks whether
 * what it adds or deletes is in the journal at that moment, and notices two calls
 * running at once. Only `ip rule` is used here (updateReplyPorts and undo of a
 * journal without sysctls), and the test checks that `ip` is the stand-in before
 * anything runs: nothing reaches the real host.
 *
 *   HostSetup ──execFile("ip rule …")──► <tmp>/bin/ip (node) ──► <tmp>/rules.json, <tmp>/log.jsonl
 */

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type HostPlan, HostSetup, readJournal, ruleShows } from '../../src/host/setup.js';

const FAKE_IP = `
const fs = require('node:fs');
const [, , ...argv] = process.argv;
const { FAKE_IP_DIR: dir } = process.env;
const file = (n) => dir + '/' + n;
const log = (o) => fs.appendFileSync(file('log.jsonl'), JSON.stringify(o) + '\\n');
if (fs.existsSync(file('busy'))) log({ overlap: argv.join(' ') });
fs.writeFileSync(file('busy'), '');
// Long enough for a second call to start meanwhile if the caller let it.
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30);
const rules = fs.existsSync(file('rules.json')) ? JSON.parse(fs.readFileSync(file('rules.json'), 'utf8')) : [];
const journal = fs.existsSync(file('vpm0.state.json'))
  ? JSON.parse(fs.readFileSync(file('vpm0.state.json'), 'utf8')).changes.map((c) => (c.args || []).join(' '))
  : [];
const [obj, cmd, ...args] = argv;
const spec = args.join(' ');
let code = 0;
if (obj !== 'rule') code = 9;
else if (cmd === 'show') {
  for (const r of rules) if (r.startsWith('pref ' + args[1] + ' ')) process.stdout.write(r.replace(/^pref (\\d+) /, '$1:\\t') + '\\n');
} else if (cmd === 'add') {
  log({ op: 'add', spec, journalled: journal.includes(spec) });
  // Port 9 stands for a rule the kernel refuses.
  if (args.includes('9')) { process.stderr.write('RTNETLINK answers: Invalid argument\\n'); code = 2; }
  else rules.push(spec);
} else if (cmd === 'del') {
  const i = rules.indexOf(spec);
  if (i < 0) { process.stderr.write('RTNETLINK answers: No such file or directory\\n'); code = 2; }
  else rules.splice(i, 1);
  log({ op: 'del', spec, journalled: journal.includes(spec) });
} else code = 9;
fs.writeFileSync(file('rules.json'), JSON.stringify(rules));
fs.rmSync(file('busy'));
process.exit(code);
`;

let dir = '';
let savedPath: string | undefined;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vpm-host-setup-'));
  const bin = join(dir, 'bin');
  execFileSync('mkdir', [bin]);
  writeFileSync(join(bin, 'ip'), `#!${process.execPath}\n${FAKE_IP}`, { mode: 0o755 });
  savedPath = process.env.PATH;
  process.env.PATH = `${bin}${delimiter}${savedPath ?? ''}`;
  process.env.FAKE_IP_DIR = dir;
  // Never the real ip(8): these tests add and delete policy rules.
  const ip = execFileSync('sh', ['-c', 'command -v ip'], { encoding: 'utf8' }).trim();
  if (ip !== join(bin, 'ip')) throw new Error(`ip resolves to ${ip}, not the stand-in`);
});

afterAll(() => {
  process.env.PATH = savedPath;
  delete process.env.FAKE_IP_DIR;
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  for (const f of ['rules.json', 'log.jsonl', 'vpm0.state.json', 'busy'])
    rmSync(join(dir, f), { force: true });
});

const plan = (...ports: [number, number][]): HostPlan => ({
  tunName: 'vpm0',
  tunAddr: '198.19.255.1',
  localClientAddr: '198.19.255.2',
  mtu: 1500,
  txQueueLen: 10000,
  vips: ['198.19.0.9'],
  replyPorts: ports.map(([lo, hi]) => ({ lo, hi })),
  replyProtocols: ['udp'],
  routeTable: 100,
  rulePriority: 100,
});

/** A UDP reply rule for instance ports `sport`, from any address the host sends. */
const rule = (sport: string) => `pref 100 iif lo ipproto udp sport ${sport} lookup 100`;
/** The protocol's rule from the TUN address, whatever the ports. */
const WIDE = 'pref 100 from 198.19.255.1 ipproto udp lookup 100';

const rules = (): string[] => JSON.parse(readFileSync(join(dir, 'rules.json'), 'utf8'));
const calls = (): Record<string, unknown>[] =>
  existsSync(join(dir, 'log.jsonl'))
    ? readFileSync(join(dir, 'log.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
    : [];
const stateFile = () => join(dir, 'vpm0.state.json');

describe('HostSetup reply rules', () => {
  it('journals each rule before adding it, and undo removes exactly those', async () => {
    writeFileSync(join(dir, 'rules.json'), JSON.stringify([rule('19005')])); // someone else's
    const host = new HostSetup(stateFile(), 'vpm0');
    await host.updateReplyPorts(plan([19001, 19002], [19005, 19005]));
    expect(rules()).toEqual([rule('19005'), WIDE, rule('19001-19002')]);
    expect(calls()).toEqual([
      { op: 'add', spec: WIDE, journalled: true },
      { op: 'add', spec: rule('19001-19002'), journalled: true },
    ]);
    expect(readJournal(stateFile())!.changes).toEqual([
      { kind: 'rule', args: WIDE.split(' ') },
      { kind: 'rule', args: rule('19001-19002').split(' ') },
    ]);
    await host.undo();
    expect(rules()).toEqual([rule('19005')]);
    expect(existsSync(stateFile())).toBe(false);
  });

  it('on reload adds the new rules before it removes the old ones (make before break)', async () => {
    const host = new HostSetup(stateFile(), 'vpm0');
    await host.updateReplyPorts(plan([19001, 19002]));
    await host.updateReplyPorts(plan([19001, 19003]));
    expect(calls().map((c) => [c.op, c.spec])).toEqual([
      ['add', WIDE],
      ['add', rule('19001-19002')],
      ['add', rule('19001-19003')],
      ['del', rule('19001-19002')],
    ]);
    expect(rules()).toEqual([WIDE, rule('19001-19003')]);
    expect(readJournal(stateFile())!.changes).toEqual([
      { kind: 'rule', args: WIDE.split(' ') },
      { kind: 'rule', args: rule('19001-19003').split(' ') },
    ]);
  });

  it('tells a single port from a range that starts with it', async () => {
    const host = new HostSetup(stateFile(), 'vpm0');
    await host.updateReplyPorts(plan([19001, 19002]));
    await host.updateReplyPorts(plan([19001, 19001]));
    expect(rules()).toEqual([WIDE, rule('19001')]);
    await host.undo();
    expect(rules()).toEqual([]);
  });

  it('runs one operation at a time, in the order asked: two reloads and an undo at once', async () => {
    const host = new HostSetup(stateFile(), 'vpm0');
    await Promise.all([
      host.updateReplyPorts(plan([19001, 19002])),
      host.updateReplyPorts(plan([19001, 19003])),
      host.undo(),
    ]);
    const log = calls();
    expect(log.filter((c) => 'overlap' in c)).toEqual([]);
    expect(log.map((c) => [c.op, c.spec])).toEqual([
      ['add', WIDE],
      ['add', rule('19001-19002')],
      ['add', rule('19001-19003')],
      ['del', rule('19001-19002')],
      ['del', rule('19001-19003')],
      ['del', WIDE],
    ]);
    expect(rules()).toEqual([]);
    expect(existsSync(stateFile())).toBe(false);
  });

  it('a failed command fails its operation only; the journal had it first, which undo survives', async () => {
    const host = new HostSetup(stateFile(), 'vpm0');
    const [failed, next] = await Promise.allSettled([
      host.updateReplyPorts(plan([9, 9])),
      host.updateReplyPorts(plan([19001, 19002])),
    ]);
    expect(failed).toMatchObject({
      status: 'rejected',
      reason: {
        code: 'ERR_HOST_COMMAND',
        message: `ip rule add ${rule('9')} failed: RTNETLINK answers: Invalid argument`,
      },
    });
    expect(next.status).toBe('fulfilled');
    expect(calls()[1]).toEqual({ op: 'add', spec: rule('9'), journalled: true });
    expect(rules()).toEqual([WIDE, rule('19001-19002')]);
    await host.undo();
    expect(rules()).toEqual([]);
    // The rule that never came is not deleted: only what exists is undone.
    expect(calls().filter((c) => c.op === 'del')).toEqual([
      { op: 'del', spec: rule('19001-19002'), journalled: true },
      { op: 'del', spec: WIDE, journalled: true },
    ]);
  });

  it('follows the protocols of the services: TCP has one rule, a reload without UDP removes its rules', async () => {
    const host = new HostSetup(stateFile(), 'vpm0');
    const tcpRule = 'pref 100 from 198.19.255.1 ipproto tcp lookup 100';
    await host.updateReplyPorts({ ...plan([19001, 19002]), replyProtocols: ['tcp', 'udp'] });
    expect(rules()).toEqual([tcpRule, WIDE, rule('19001-19002')]);
    await host.updateReplyPorts({ ...plan([19001, 19002]), replyProtocols: ['tcp'] });
    expect(rules()).toEqual([tcpRule]);
    await host.undo();
    expect(rules()).toEqual([]);
  });
});

describe('ruleShows', () => {
  const args = 'pref 100 from 198.19.255.1 ipproto tcp sport 19001 lookup 100'.split(' ');
  it('matches the canonical form ip rule show prints, word by word', () => {
    expect(ruleShows('100:\tfrom 198.19.255.1 ipproto tcp sport 19001 lookup 100', args)).toBe(
      true,
    );
    expect(
      ruleShows('100:\tfrom 198.19.255.1 ipproto tcp sport 19001-19002 lookup 100', args),
    ).toBe(false);
    expect(ruleShows('100:\tfrom 198.19.255.1 ipproto tcp sport 19001 lookup 1000', args)).toBe(
      false,
    );
    // A selector the rule does not set must not be in the line.
    const wide = 'pref 100 from 198.19.255.1 ipproto tcp lookup 100'.split(' ');
    expect(ruleShows('100:\tfrom 198.19.255.1 ipproto tcp sport 19001 lookup 100', wide)).toBe(
      false,
    );
    expect(ruleShows('100:\tfrom 198.19.255.1 ipproto tcp lookup 100', wide)).toBe(true);
    const udp = rule('19001').split(' ');
    expect(ruleShows('100:\tfrom all iif lo ipproto udp sport 19001 lookup 100', udp)).toBe(true);
    expect(
      ruleShows('100:\tfrom 198.19.255.1 iif lo ipproto udp sport 19001 lookup 100', udp),
    ).toBe(false);
    expect(ruleShows('100:\tfrom all iif vpm0 lookup 101', args)).toBe(false);
    expect(
      ruleShows('100:\tfrom all iif vpm0 lookup 101', [
        'pref',
        '100',
        'iif',
        'vpm0',
        'lookup',
        '101',
      ]),
    ).toBe(true);
  });
});
