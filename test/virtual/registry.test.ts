import { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { PortPool } from '../../src/virtual/pool.js';
import { Registry } from '../../src/virtual/registry.js';

const file = (range: string, wait: number, staticB: number[] = []) => ({
  services: [
    { name: 'web', address: '198.19.0.9', port: 9000 },
    { name: 'alt', address: '198.19.0.10', port: 8080 },
  ],
  applications: [{ aid: 'a' }, { aid: 'b', instances: staticB.map((port) => ({ port })) }],
  selectors: [],
  default: { aid: 'a' },
  pool: { range, quarantineMs: 0, waitTimeoutMs: wait },
});

function setup(range = '20000-20001', wait = 50) {
  const cfg = parseConfig(file(range, wait), 'test.json');
  // As the daemon does: the rules and the static instances from the config.
  const instances = new InstanceSet();
  instances.replaceStatic(rulesFromConfig(cfg), staticInstancesFromConfig(cfg));
  const [lo, hi] = range.split('-').map(Number) as [number, number];
  const pool = new PortPool(lo, hi, 0, wait);
  return { cfg, instances, pool, reg: new Registry(cfg, instances, pool) };
}

const bindArgs = (aid: string, vport: number, pid = 100, fd = 3, addr = '0.0.0.0') => ({
  aid,
  proto: 'tcp' as const,
  vport,
  addr,
  pid,
  fd,
});

describe('Registry', () => {
  it('groups binds of one AID and virtual port on one real port (AID grouping)', async () => {
    const { reg, instances, cfg } = setup();
    const c1 = new Socket();
    const c2 = new Socket();
    const r1 = await reg.bind(c1, bindArgs('a', 9000, 100));
    const r2 = await reg.bind(c2, bindArgs('a', 9000, 200));
    expect(r2.port).toBe(r1.port);
    const rb = await reg.bind(c1, bindArgs('b', 9000, 100, 4));
    expect(rb.port).not.toBe(r1.port);
    expect(instances.of(0)).toEqual([
      {
        index: 0,
        source: 'registered',
        aid: 0,
        addr: cfg.tun.address,
        port: r1.port,
        service: -1,
        vport: 9000,
      },
    ]);
    // The instance serves 9000 only: service 0, not service 1 (port 8080).
    expect(instances.pick(0, 0)).toBe(0);
    expect(instances.pick(0, 1)).toBe(-1);
    const list = reg.instances();
    expect(list.find((i) => i.aid === 'a')).toMatchObject({
      vport: 9000,
      port: r1.port,
      pids: [100, 200],
      registrations: 2,
    });
  });

  it('releases when the last registration ends: by release, or by the connection closing', async () => {
    const { reg, instances, pool } = setup();
    const c1 = new Socket();
    const c2 = new Socket();
    const { port } = await reg.bind(c1, bindArgs('a', 9000, 100, 5));
    await reg.bind(c2, bindArgs('a', 9000, 200, 6));
    expect(reg.release(c1, { pid: 100, fd: 5, port })).toEqual({ released: 1 });
    expect(instances.of(0)).toHaveLength(1);
    expect(reg.connClosed(c2)).toBe(1);
    expect(instances.of(0)).toHaveLength(0);
    expect(pool.stats().inUse).toBe(0);
  });

  it('keeps registered instances across a reload, which replaces only the static ones', async () => {
    const { reg, instances, cfg } = setup();
    const c = new Socket();
    const { port } = await reg.bind(c, bindArgs('b', 9000));
    // The daemon's reload: new rules and static instances, then the registry's new config.
    const next = parseConfig(file('20000-20001', 50, [19002]), 'test.json');
    instances.replaceStatic(rulesFromConfig(next), staticInstancesFromConfig(next));
    reg.rebind(next);
    expect(instances.of(1).map((i) => [i.source, i.port])).toEqual([
      ['static', 19002],
      ['registered', port],
    ]);
    expect(reg.instances().filter((i) => i.aid === 'b')).toMatchObject([
      { source: 'static', port: 19002, address: '198.19.255.1' },
      { source: 'registered', port, address: '198.19.255.1', pids: [100] },
    ]);
    // The registration still ends as before: its instance leaves, the static one stays.
    expect(reg.connClosed(c)).toBe(1);
    expect(instances.of(1).map((i) => [i.source, i.port])).toEqual([['static', 19002]]);
    expect(cfg.applications[1]!.instances).toEqual([]);
  });

  it('fails with ERR_PORTS_EXHAUSTED when the pool stays empty, and leaves nothing behind', async () => {
    const { reg, pool } = setup('20000-20000', 30);
    await reg.bind(new Socket(), bindArgs('a', 9000));
    const c = new Socket();
    await expect(reg.bind(c, bindArgs('b', 9000))).rejects.toMatchObject({
      code: 'ERR_PORTS_EXHAUSTED',
    });
    expect(reg.instances().filter((i) => i.aid === 'b')).toEqual([]);
    expect(pool.stats()).toMatchObject({ inUse: 1, waiting: 0 });
    expect(reg.connClosed(c)).toBe(0);
  });

  // Arguments of the wrong shape never reach the registry: the control server
  // refuses them against their schema (test/control/server.test.ts).
  it('refuses unknown AIDs, non-multiplexed ports and loopback with clear codes', async () => {
    const { reg } = setup();
    const c = new Socket();
    await expect(reg.bind(c, bindArgs('zz', 9000))).rejects.toMatchObject({
      code: 'ERR_UNKNOWN_AID',
      message: expect.stringMatching(/"zz" is not in the configuration \(known: a, b\)/),
    });
    await expect(reg.bind(c, bindArgs('a', 9001))).rejects.toMatchObject({
      code: 'ERR_NOT_MULTIPLEXED',
    });
    await expect(reg.bind(c, bindArgs('a', 9000, 1, 1, '127.0.0.1'))).rejects.toMatchObject({
      code: 'ERR_BIND_ADDRESS',
    });
    expect(reg.hello({ aid: 'a' })).toMatchObject({
      known: true,
      ports: [
        { proto: 'tcp', vport: 9000 },
        { proto: 'tcp', vport: 8080 },
      ],
    });
  });

  it('remembers the AID of reported local client connections, by address and port or port alone', () => {
    const { reg, cfg } = setup();
    expect(
      reg.connectReport({
        aid: 'b',
        local: '198.19.255.1:40000',
        remote: '198.19.0.9:9000',
        pid: 7,
      }),
    ).toEqual({ aid: 'b' });
    reg.connectReport({ aid: 'a', local: '0.0.0.0:40005', remote: '198.19.0.9:9000', pid: 7 });
    expect(reg.localClientAid(cfg.tun.address, 40000)).toBe(1);
    expect(reg.localClientAid(cfg.tun.address, 40001)).toBe(-1);
    expect(reg.localClientAid(cfg.tun.address, 40005)).toBe(0);
    expect(() => reg.connectReport({ aid: 'b', local: 'nonsense' })).toThrow(/"local" must be/);
    expect(() => reg.connectReport({ aid: 'zz', local: '0.0.0.0:1' })).toThrow(
      /not in the configuration/,
    );
  });
});
