/*
 * Two daemons with one TUN name (vpm0) in two network namespaces, on the default
 * control socket: each gets a path of its own namespace (/run/vpm/netns/<name>/),
 * and with it a journal of its own, so both run, `ip netns exec X vpm stats` (no
 * -s, no -c) reaches the daemon of X, and each stop restores its own namespace.
 * Two configs that set the same control.socket: the second daemon refuses to
 * start, naming the path and control.socket, and touches nothing; `vpm down` in
 * the other namespace does not stop the first.
 *
 *   ns one: vpm up (vpm0, AID "one")        ns two: vpm up (vpm0, AID "two")
 *
 * The default paths are in the real /run/vpm/netns/ (a path is not per namespace):
 * the directories of the lab's namespaces are removed afterwards.
 */

import { existsSync, rmdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot } from '../support/netns.js';
import {
  type HostState,
  hostState,
  requireVpmBuild,
  runVpm,
  type VpmConfigFile,
  VpmDaemon,
  writeVpmConfig,
} from '../support/vpm.js';
import { VIP } from './topology.js';

const CONFIG = (aid: string, socket?: string): VpmConfigFile => ({
  services: [{ name: 'web', address: VIP, port: 9000 }],
  applications: [{ aid, instances: [{ port: 19001 }] }],
  default: { aid },
  control: { socket },
});

describe('two daemons with one TUN name in two network namespaces', () => {
  let lab: NetLab;
  let one: string;
  let two: string;
  let pristine: { one: HostState; two: HostState };

  beforeAll(() => {
    requireRoot();
    requireCommands('ip', 'sysctl');
    requireVpmBuild();
    lab = new NetLab('twons');
    one = lab.namespace('one');
    two = lab.namespace('two');
    for (const ns of [one, two]) lab.run(ns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=0']);
    pristine = { one: hostState(lab, one), two: hostState(lab, two) };
  });

  afterAll(async () => {
    await lab?.cleanup();
    for (const ns of [one, two])
      if (ns) rmSync(`/run/vpm/netns/${ns}`, { recursive: true, force: true });
    try {
      rmdirSync('/run/vpm/netns'); // only when empty: another daemon's may be there
    } catch {
      // not empty, or not there
    }
  });

  const daemons: VpmDaemon[] = [];
  afterEach(async () => {
    for (const d of daemons.splice(0)) if (d.alive) await d.stop().catch(() => undefined);
  });

  async function up(ns: string, cfg: VpmConfigFile): Promise<VpmDaemon> {
    const dir = lab.tempDir();
    const d = await VpmDaemon.startFile(lab, ns, writeVpmConfig(dir, cfg), dir);
    daemons.push(d);
    return d;
  }

  it('on the default control socket both run, each found by the CLI of its namespace, each stop restores its own', async () => {
    const a = await up(one, CONFIG('one'));
    const b = await up(two, CONFIG('two'));
    expect(a.socket).toBe(`/run/vpm/netns/${one}/vpm0.sock`);
    expect(b.socket).toBe(`/run/vpm/netns/${two}/vpm0.sock`);
    expect(existsSync(a.stateFile) && existsSync(b.stateFile)).toBe(true);
    expect(dirname(a.stateFile)).not.toBe(dirname(b.stateFile));

    for (const [ns, aid] of [
      [one, 'one'],
      [two, 'two'],
    ] as const) {
      const r = await runVpm(lab, ns, ['stats', '--json']);
      expect(r.code, r.stderr).toBe(0);
      expect(Object.keys(JSON.parse(r.stdout).perAid)).toEqual([aid]);
    }

    expect(await a.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostState(lab, one)).toEqual(pristine.one);
    expect(b.alive).toBe(true);
    expect(hostState(lab, two).ipForward).toBe('1');
    expect(await b.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostState(lab, two)).toEqual(pristine.two);
  });

  it('with one control.socket set for both, the second refuses to start and says what to change; vpm down there leaves the first alone', async () => {
    const shared = `${lab.tempDir()}/vpm.sock`;
    const a = await up(one, CONFIG('one', shared));
    const during = hostState(lab, one);
    const cfgB = writeVpmConfig(lab.tempDir(), CONFIG('two', shared));
    const r = await runVpm(lab, two, ['up', '-c', cfgB]);
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stderr).toContain(`control socket ${shared}`);
    expect(r.stderr).toContain(`pid ${a.pid}, in another network namespace`);
    expect(r.stderr).toContain('set control.socket');
    expect(hostState(lab, two)).toEqual(pristine.two);

    const down = await runVpm(lab, two, ['down', '-c', cfgB]);
    expect(down.code, down.stdout + down.stderr).toBe(1);
    expect(down.stderr).toMatch(/another network namespace/);
    expect(a.alive).toBe(true);
    expect(hostState(lab, one)).toEqual(during);
    expect(hostState(lab, two)).toEqual(pristine.two);

    expect(await a.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostState(lab, one)).toEqual(pristine.one);
  });
});
