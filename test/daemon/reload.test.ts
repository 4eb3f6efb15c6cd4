/**
 * reloadPlan: which settings of a new config file need a restart, which changed
 * and are applied live, and the configuration the daemon runs with afterwards.
 */

import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { ipv6ReloadProblem, RESTART_SETTINGS, reloadPlan } from '../../src/daemon/reload.js';

type File = Record<string, unknown> & {
  tun?: Record<string, unknown>;
  limits?: Record<string, unknown>;
  health?: Record<string, unknown>;
  timeouts?: Record<string, unknown>;
};

const base = (): File => ({
  tun: { name: 'vpm0' },
  services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
  applications: [
    { aid: 'first', instances: [{ port: 19001 }] },
    { aid: 'second', instances: [{ port: 19002 }] },
  ],
  selectors: [{ clients: ['198.18.1.0/24'], aid: 'first' }],
  default: { refuse: true },
  control: { socket: '/run/vpm/test.sock' },
});

const COOP = {
  listen: '198.18.0.1:7070',
  peers: [{ name: 'client', key: 'c0'.repeat(32) }],
};

const load = (f: File) => parseConfig(f, 'vpm.json');

/** The plan for reloading `base()` with the file `change` made of it. */
function planFor(change: (f: File) => void) {
  const next = base();
  change(next);
  return reloadPlan(load(base()), load(next));
}

describe('reloadPlan', () => {
  it('the same file: nothing to restart, nothing changed, the same configuration', () => {
    const current = load(base());
    const plan = reloadPlan(current, load(base()));
    expect(plan).toMatchObject({ needsRestart: [], changed: [] });
    expect(plan.config).toEqual(current);
  });

  it('applies services, applications, selectors, the default and timeouts live', () => {
    const plan = planFor((f) => {
      f.services = [
        ...(f.services as unknown[]),
        { name: 'alt', address: '198.19.0.9', port: 8080 },
      ];
      (f.applications as { instances: unknown[] }[])[0]!.instances.push({ port: 19003 });
      f.selectors = [{ clients: ['198.18.1.0/24'], aid: 'second' }];
      f.default = { aid: 'first' };
      f.timeouts = { establishedIdleMs: 60_000 };
    });
    expect(plan.needsRestart).toEqual([]);
    expect(plan.changed).toEqual(['services', 'applications', 'selectors', 'default', 'timeouts']);
    expect(plan.config.services.map((s) => s.port)).toEqual([9000, 8080]);
    expect(plan.config.selectors[0]!.aid).toBe('second');
    expect(plan.config.timeouts.establishedIdleMs).toBe(60_000);
  });

  it('reports each restart-only setting that changed, and keeps the running value', () => {
    const current = load(base());
    const cases: [string, (f: File) => void][] = [
      ['tun', (f) => (f.tun = { name: 'vpm0', mtu: 9000 })],
      ['control.socket', (f) => (f.control = { socket: '/run/vpm/other.sock' })],
      ['control.group', (f) => (f.control = { ...(f.control as object), group: 65534 })],
      [
        'control.monitorGroup',
        (f) => (f.control = { ...(f.control as object), monitorGroup: 65534 }),
      ],
      ['limits.maxFlows', (f) => (f.limits = { maxFlows: 131072, embryonicFlows: 16384 })],
      ['limits.embryonicFlows', (f) => (f.limits = { embryonicFlows: 100 })],
      ['limits.heldFragments', (f) => (f.limits = { heldFragments: 3 })],
      ['limits.heldFragmentBytes', (f) => (f.limits = { heldFragmentBytes: 3000 })],
      ['health.synCopies', (f) => (f.health = { synCopies: 3 })],
      ['pool', (f) => (f.pool = { range: '20000-20099' })],
      ['cooperative', (f) => (f.cooperative = COOP)],
    ];
    expect(cases.map(([k]) => k)).toEqual([...RESTART_SETTINGS]);
    for (const [setting, change] of cases) {
      const plan = planFor(change);
      expect(plan.needsRestart, setting).toEqual([setting]);
      expect(plan.changed, setting).toEqual([]);
      expect(plan.config.tun, setting).toEqual(current.tun);
      expect(plan.config.control, setting).toEqual(current.control);
      expect(plan.config.limits, setting).toEqual(current.limits);
      expect(plan.config.health, setting).toEqual(current.health);
      expect(plan.config.pool, setting).toEqual(current.pool);
      expect(plan.config.cooperative, setting).toEqual(current.cooperative);
    }
  });

  it("applies the peers' keys live (a rollover), keeping the rest of cooperative", () => {
    const current = load({ ...base(), cooperative: COOP });
    const k2 = { id: 'k2', key: 'd1'.repeat(32) };
    const plan = reloadPlan(
      current,
      load({
        ...base(),
        cooperative: { ...COOP, timeoutMs: 777, peers: [{ name: 'client', keys: [k2] }] },
      }),
    );
    expect(plan.needsRestart).toEqual(['cooperative']);
    expect(plan.changed).toEqual(['cooperative.peers[].keys']);
    expect(plan.config.cooperative!.timeoutMs).toBe(current.cooperative!.timeoutMs);
    expect(plan.config.cooperative!.peers[0]!.keys).toEqual([k2]);
  });

  it('applies the ICMP rate live and keeps the rest of limits', () => {
    const current = load(base());
    const plan = planFor((f) => (f.limits = { icmpPerSecond: 5, maxFlows: 1024 }));
    // The embryonic share left to its default follows maxFlows: it changes too.
    expect(plan.needsRestart).toEqual(['limits.maxFlows', 'limits.embryonicFlows']);
    expect(plan.changed).toEqual(['limits.icmpPerSecond']);
    expect(plan.config.limits).toEqual({ ...current.limits, icmpPerSecond: 5 });
  });

  it('applies health.downMs live and keeps the number of SYN copies', () => {
    const current = load(base());
    const plan = planFor((f) => (f.health = { downMs: 500, synCopies: 8 }));
    expect(plan.needsRestart).toEqual(['health.synCopies']);
    expect(plan.changed).toEqual(['health.downMs']);
    expect(plan.config.health).toEqual({ downMs: 500, synCopies: current.health.synCopies });
  });

  it('reports several restart-only settings in a fixed order, beside live changes', () => {
    const plan = planFor((f) => {
      f.cooperative = COOP;
      f.tun = { name: 'vpm0', txQueueLen: 500 };
      f.selectors = [];
    });
    expect(plan.needsRestart).toEqual(['tun', 'cooperative']);
    expect(plan.changed).toEqual(['selectors']);
    expect(plan.config.selectors).toEqual([]);
    expect(plan.config.tun.txQueueLen).toBe(10_000);
  });

  it('takes what is neither restart-only nor compared (log, metrics, source) from the new file', () => {
    const plan = planFor((f) => {
      f.log = { level: 'debug' };
    });
    expect(plan).toMatchObject({ needsRestart: [], changed: [] });
    expect(plan.config.log.level).toBe('debug');
  });

  it('is pure: neither configuration is changed', () => {
    const current = load(base());
    const next = load({ ...base(), limits: { maxFlows: 1024 } });
    const text = (v: unknown) =>
      JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x));
    const before = text([current, next]);
    reloadPlan(current, next);
    expect(text([current, next])).toBe(before);
  });
});

describe('ipv6ReloadProblem: IPv6 is restart-only, and a reload that turns it on or off is refused', () => {
  const load = (f: File) => parseConfig(f, 'vpm.json');
  const v6 = (): File => ({
    ...base(),
    services: [{ name: 'web', address: ['198.19.0.9', '2001:2::9'], port: 9000 }],
  });

  it('the same family set: no problem (also an IPv6 change that keeps IPv6 on)', () => {
    expect(ipv6ReloadProblem(load(base()), load(base()))).toBeNull();
    const other = v6();
    (other.services as { address: string[] }[])[0]!.address = ['198.19.0.9', '2001:2::10'];
    expect(ipv6ReloadProblem(load(v6()), load(other))).toBeNull();
  });

  it('turning IPv6 on names the field of the new file that uses it', () => {
    expect(ipv6ReloadProblem(load(base()), load(v6()))).toEqual({
      path: 'services[0].address',
      message:
        'uses IPv6, which the running daemon does not (tun.ipv6 is decided at start-up): restart vpm to turn IPv6 on; the reload is refused and the old configuration stays',
    });
    const sel = base();
    sel.selectors = [{ clients: ['198.18.1.0/24', '2001:2:1::/48'], aid: 'first' }];
    expect(ipv6ReloadProblem(load(base()), load(sel))?.path).toBe('selectors[0].clients');
  });

  it('turning IPv6 off names tun.ipv6 and what used it', () => {
    expect(ipv6ReloadProblem(load(v6()), load(base()))).toEqual({
      path: 'tun.ipv6',
      message:
        'the running daemon uses IPv6 (services[0].address of its configuration) and this file uses none: restart vpm to turn IPv6 off; the reload is refused and the old configuration stays',
    });
  });

  it('reloadPlan compares configurations with IPv6 addresses (bigints) without throwing', () => {
    const other = v6();
    (other.services as { address: string[] }[])[0]!.address = ['198.19.0.9', '2001:2::10'];
    expect(reloadPlan(load(v6()), load(other)).changed).toEqual(['services']);
  });
});
