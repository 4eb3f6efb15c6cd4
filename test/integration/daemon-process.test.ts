/*
 * The daemon as a process: what `vpm up` changes on the host, and that SIGTERM,
 * a crash (SIGKILL) followed by `vpm up` or `vpm down`, and a bad config each
 * leave the host exactly as it was. The real CLI, spawned in a namespace.
 *
 *     ns tenant-a                            ns host                            ns tenant-b
 * ┌──────────────────┐        ┌────────────────────────────────────┐        ┌──────────────────┐
 * │ a0 198.18.1.2/24 │══veth══│ ha 198.18.1.1/24  hb 198.18.2.1/24 │══veth══│ b0 198.18.2.2/24 │
 * │ client           │        │ ip_forward=0 before vpm up         │        └──────────────────┘
 * └──────────────────┘        │ vpm up / down: started, killed,    │
 *                             │   restarted                        │
 *                             │ instances on 0.0.0.0:19001,        │
 *                             │   0.0.0.0:19002 (they outlive      │
 *                             │   the daemons and their TUNs)      │
 *                             └────────────────────────────────────┘
 *
 * "Host state" is `ip rule`, `ip -4 route show table all`, `ip -o link`,
 * `ip -4 -o addr` and net.ipv4.ip_forward in the host namespace, taken before the
 * first `vpm up` (see `hostState`).
 */

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  type HostState,
  hostState,
  requireVpmBuild,
  rulesForTable,
  runVpm,
  type VpmConfigFile,
  VpmDaemon,
  writeVpmConfig,
} from '../support/vpm.js';
import { CLIENT_A, runClient, startInstance, type Topology, twoTenants, VIP } from './topology.js';

const TABLE = 100;

const CONFIG: VpmConfigFile = {
  services: [{ name: 'web', address: VIP, port: 9000 }],
  // TCP only: one reply rule from the TUN address (whatever the instance ports), and the ICMP rule.
  applications: [
    { aid: 'tenant-a', instances: [{ port: 19001 }] },
    { aid: 'tenant-b', instances: [{ port: 19002 }] },
  ],
  selectors: [{ clients: ['198.18.2.0/24'], aid: 'tenant-b' }],
  default: { aid: 'tenant-a' },
};

describe('vpm up as a process: signals, crashes, bad config', () => {
  let lab: NetLab;
  let topo: Topology;
  let pristine: HostState;
  /** One directory, so every start and `vpm down` finds the same journal. */
  let dir: string;
  let configPath: string;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'sysctl');
    requireVpmBuild();
    lab = new NetLab('daemonproc');
    topo = twoTenants(lab);
    await Promise.all([
      startInstance(lab, topo.host, 'tenant-a', 19001, '0.0.0.0'),
      startInstance(lab, topo.host, 'tenant-b', 19002, '0.0.0.0'),
    ]);
    dir = lab.tempDir();
    configPath = writeVpmConfig(dir, CONFIG);
    pristine = hostState(lab, topo.host);
    expect(pristine.ipForward).toBe('0');
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  /** Every daemon started here; one a failed test left running is stopped after it. */
  const daemons: VpmDaemon[] = [];
  afterEach(async () => {
    for (const d of daemons.splice(0)) if (d.alive) await d.stop().catch(() => undefined);
  });

  async function up(opts: { cwd?: string; config?: string } = {}): Promise<VpmDaemon> {
    const d = await VpmDaemon.startFile(lab, topo.host, opts.config ?? configPath, dir, opts);
    daemons.push(d);
    return d;
  }

  async function expectWorks(): Promise<void> {
    const r = await runClient(lab, topo.tenantA, { mode: 'hello', localAddress: CLIENT_A });
    expect(r.event, r.output).toBe('done');
    expect((r.hello as Record<string, unknown>).instance).toBe('tenant-a');
    expect((r.hello as Record<string, unknown>).remoteAddress).toBe(CLIENT_A);
  }

  async function tunGone(): Promise<void> {
    await waitFor(() => !lab.run(topo.host, 'ip', ['-o', 'link', 'show']).includes('vpm0'), {
      what: 'vpm0 to disappear',
      timeoutMs: 5000,
    });
  }

  it('changes the host while up, and SIGTERM restores it exactly, exit code 0', async () => {
    const vpm = await up();
    const during = hostState(lab, topo.host);
    expect(during.ipForward).toBe('1');
    expect(during.links).toMatch(/vpm0/);
    expect(during.routes).toMatch(new RegExp(`^${VIP.replace(/\./g, '\\.')} dev vpm0`, 'm'));
    expect(during.routes).toMatch(new RegExp(`^default dev vpm0 table ${TABLE}`, 'm'));
    expect(rulesForTable(lab, topo.host, TABLE)).toEqual([
      `100:\tfrom 198.19.255.1 ipproto tcp lookup ${TABLE}`,
      `100:\tfrom 198.19.255.1 iif lo ipproto icmp lookup ${TABLE}`,
    ]);
    expect(existsSync(vpm.stateFile)).toBe(true);
    await expectWorks();

    const exit = await vpm.stop('SIGTERM');
    expect(exit, vpm.output()).toEqual({ code: 0, signal: null });
    expect(hostState(lab, topo.host)).toEqual(pristine);
    expect(existsSync(vpm.stateFile)).toBe(false);
    expect(vpm.logs().map((l) => l.event)).toContain('stopping');
  });

  it('after SIGKILL, the next vpm up takes the state over: the same rules, nothing undone, and it works', async () => {
    const first = await up();
    const during = hostState(lab, topo.host);
    expect(await first.kill()).toEqual({ code: null, signal: 'SIGKILL' });
    // What a crash leaves: everything — the persistent TUN with its address and
    // routes, the policy rules, ip_forward, and the journal that lists them. The
    // TUN has no carrier while no process holds it: its routes show "linkdown".
    const crashed = hostState(lab, topo.host);
    expect({ ...crashed, links: '', routes: crashed.routes.replace(/ linkdown/g, '') }).toEqual({
      ...during,
      links: '',
    });
    expect(crashed.links).toMatch(/vpm0: <NO-CARRIER,/);
    expect(existsSync(first.stateFile)).toBe(true);

    const second = await up();
    expect(second.logs().some((l) => l.event === 'stale_state_removed')).toBe(false);
    const adopted = second.logs().find((l) => l.event === 'state_adopted');
    expect(adopted, second.output()).toBeDefined();
    expect(adopted!.previousPid).toBe(first.pid);
    // Nothing added twice, nothing lost (the TUN's operational state reads UP
    // rather than UNKNOWN once its carrier has been off and on again).
    const taken = hostState(lab, topo.host);
    const operstate = (t: HostState) => ({
      ...t,
      links: t.links.replace(/ state (UP|UNKNOWN) /g, ' '),
    });
    expect(operstate(taken)).toEqual(operstate(during));
    expect(rulesForTable(lab, topo.host, TABLE)).toHaveLength(2);
    await expectWorks();

    expect(await second.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect(hostState(lab, topo.host)).toEqual(pristine);
  });

  it('after SIGKILL, vpm down -c CFG removes the leftovers, the persistent TUN last', async () => {
    const vpm = await up();
    await vpm.kill();
    expect(lab.run(topo.host, 'ip', ['-o', 'link', 'show'])).toMatch(/vpm0/);
    expect(hostState(lab, topo.host)).not.toEqual(pristine);

    const down = await runVpm(lab, topo.host, ['down', '-c', configPath]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(
      /^undone: ip rule del .*from 198\.19\.255\.1 ipproto tcp lookup 100$/m,
    );
    expect(down.stdout).toMatch(/^undone: ip rule del .*ipproto icmp iif lo lookup 100$/m);
    expect(down.stdout).toMatch(/^undone: sysctl net\.ipv4\.ip_forward=0$/m);
    // Listed in journal order (the link first); undone newest first (the link last).
    expect(down.stdout.split('\n').find((l) => l.startsWith('undone:'))).toBe(
      'undone: ip link delete dev vpm0',
    );
    await tunGone();
    expect(hostState(lab, topo.host)).toEqual(pristine);
    expect(existsSync(vpm.stateFile)).toBe(false);

    // Nothing left to do the second time.
    const again = await runVpm(lab, topo.host, ['down', '-c', configPath]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/nothing to undo/);
  });

  it('vpm down -c CFG stops a running daemon, which undoes its changes', async () => {
    const vpm = await up();
    const down = await runVpm(lab, topo.host, ['down', '-c', configPath]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toContain(`stopped vpm (pid ${vpm.pid})`);
    expect(await vpm.stop()).toEqual({ code: 0, signal: null });
    expect(hostState(lab, topo.host)).toEqual(pristine);
  });

  it('refuses a second vpm up of the same config while the first runs, and leaves the first intact', async () => {
    const first = await up();
    const during = hostState(lab, topo.host);
    const second = await runVpm(lab, topo.host, ['up', '-c', configPath]);
    expect(second.code, second.stdout + second.stderr).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`already running .*pid ${first.pid}`));
    expect(first.alive).toBe(true);
    expect(hostState(lab, topo.host)).toEqual(during);
    expect(existsSync(first.stateFile)).toBe(true);
    await expectWorks();
    expect(await first.stop()).toEqual({ code: 0, signal: null });
    expect(hostState(lab, topo.host)).toEqual(pristine);
  });

  it('refuses a second vpm up even when the running daemon\'s command line does not say "vpm"', async () => {
    // Run as `node <repo>/.../main.js up -c cfg.json` from the config's directory: no
    // "vpm" in /proc/PID/cmdline (unless the repository's own path has one). A
    // liveness check that looked for that word took the running daemon for a dead
    // one and removed its reply rule and ip_forward from under it.
    const cfg = writeVpmConfig(dir, CONFIG, 'cfg.json');
    const first = await up({ config: cfg, cwd: dir });
    const during = hostState(lab, topo.host);
    const second = await runVpm(lab, topo.host, ['up', '-c', 'cfg.json'], 15_000, dir);
    expect(second.code, second.stdout + second.stderr).toBe(1);
    expect(second.stderr).toMatch(new RegExp(`already running .*pid ${first.pid}`));
    expect(hostState(lab, topo.host)).toEqual(during);
    await expectWorks();
    expect(await first.stop()).toEqual({ code: 0, signal: null });
    expect(hostState(lab, topo.host)).toEqual(pristine);
  });

  it('refuses a bad config with exit code 2, naming the field and the value, and touches nothing', async () => {
    // Its socket (were it ever used) is in the lab's directory too.
    const bad = writeVpmConfig(
      dir,
      { ...CONFIG, services: [{ name: 'web', address: VIP, port: 70000 }] },
      'bad.json',
    );
    const r = await runVpm(lab, topo.host, ['up', '-c', bad]);
    expect(r.code, r.stdout + r.stderr).toBe(2);
    expect(r.stderr).toContain(`${bad}: services[0].port: 70000`);
    expect(r.stdout).not.toMatch(/"event":"ready"/);
    expect(hostState(lab, topo.host)).toEqual(pristine);
    expect(existsSync(join(dir, 'vpm0.state.json'))).toBe(false);
  });
});
