import { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { PortPool } from '../../src/virtual/pool.js';
import { Registry, resolveBindAddress } from '../../src/virtual/registry.js';
import { formatIpv6, ipv6FromWords, ipv6ToWords, parseIpv6 } from '../../src/wire/address.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../../src/wire/ipv4.js';

const file = (range: string, wait: number, staticB: number[] = []) => ({
  services: [
    { name: 'web', address: '198.19.0.9', port: 9000 },
    { name: 'alt', address: '198.19.0.10', port: 8080 },
    // UDP on the same address and port as web (service 2), and UDP alone on 5353 (service 3).
    { name: 'web-udp', address: '198.19.0.9', port: 9000, protocol: 'udp' },
    { name: 'dns', address: '198.19.0.9', port: 5353, protocol: 'udp' },
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

const bindArgs = (
  aid: string,
  vport: number,
  pid = 100,
  fd = 3,
  addr = '0.0.0.0',
  proto: 'tcp' | 'udp' = 'tcp',
) => ({
  aid,
  proto,
  vport,
  addr,
  pid,
  fd,
});

const WEB = 0;
const ALT = 1;
const WEB_UDP = 2;
const DNS = 3;

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
        addr6: null,
        port: r1.port,
        service: -1,
        vport: 9000,
        proto: 6,
      },
    ]);
    // The instance serves TCP 9000 only: web, not alt (port 8080), not web-udp (UDP 9000).
    expect(instances.pick(0, WEB)).toBe(0);
    expect(instances.pick(0, ALT)).toBe(-1);
    expect(instances.pick(0, WEB_UDP)).toBe(-1);
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
    expect(reg.release(c1, { pid: 100, fd: 5, port })).toEqual({ released: 1, reports: 0 });
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
    // UDP 8080 is not a service (TCP 8080 is), nor TCP 5353 (UDP 5353 is).
    await expect(reg.bind(c, bindArgs('a', 8080, 1, 1, '0.0.0.0', 'udp'))).rejects.toMatchObject({
      code: 'ERR_NOT_MULTIPLEXED',
      message: 'udp/8080 is not the port of a virtual service',
    });
    await expect(reg.bind(c, bindArgs('a', 5353, 1, 1))).rejects.toMatchObject({
      code: 'ERR_NOT_MULTIPLEXED',
      message: 'tcp/5353 is not the port of a virtual service',
    });
    expect(reg.hello({ aid: 'a' })).toMatchObject({
      known: true,
      ports: [
        { proto: 'tcp', vport: 9000 },
        { proto: 'tcp', vport: 8080 },
        { proto: 'udp', vport: 9000 },
        { proto: 'udp', vport: 5353 },
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

  it('a UDP bind of 9000 registers a UDP instance of its own port, beside the TCP one of 9000', async () => {
    const { reg, instances, pool } = setup('20000-20003');
    const c = new Socket();
    const tcp = await reg.bind(c, bindArgs('a', 9000, 100, 3));
    const udp = await reg.bind(c, bindArgs('a', 9000, 100, 4, '0.0.0.0', 'udp'));
    // A second copy of the UDP server of a (another process): the same port (SO_REUSEPORT).
    const udp2 = await reg.bind(new Socket(), bindArgs('a', 9000, 200, 4, '0.0.0.0', 'udp'));
    const udpB = await reg.bind(c, bindArgs('b', 9000, 100, 5, '0.0.0.0', 'udp'));
    expect(udp.port).not.toBe(tcp.port);
    expect(udp2.port).toBe(udp.port);
    expect(new Set([tcp.port, udp.port, udpB.port]).size).toBe(3);
    expect(pool.stats().inUse).toBe(3);
    const port = (k: number) => (k < 0 ? -1 : instances.get(k)!.port);
    // TCP 9000 goes to the TCP instance, UDP 9000 to the UDP one; UDP 5353 to neither.
    expect(port(instances.pick(0, WEB))).toBe(tcp.port);
    expect(port(instances.pick(0, WEB_UDP))).toBe(udp.port);
    expect(port(instances.pick(0, DNS))).toBe(-1);
    // b has a UDP instance only: its TCP connections to 9000 find none.
    expect(port(instances.pick(1, WEB_UDP))).toBe(udpB.port);
    expect(port(instances.pick(1, WEB))).toBe(-1);
    expect(instances.serving(1, WEB)).toBe(false);
    expect(instances.serving(1, WEB_UDP)).toBe(true);
    expect(
      reg
        .instances()
        .filter((i) => i.source === 'registered')
        .map((i) => [i.aid, i.proto, i.vport, i.port, i.registrations]),
    ).toEqual([
      ['a', 'tcp', 9000, tcp.port, 1],
      ['a', 'udp', 9000, udp.port, 2],
      ['b', 'udp', 9000, udpB.port, 1],
    ]);
    // Releasing the UDP socket (pid 100, fd 4) leaves the TCP one of the same process.
    expect(reg.release(c, { pid: 100, fd: 4, port: udp.port })).toEqual({
      released: 1,
      reports: 0,
    });
    expect(port(instances.pick(0, WEB_UDP))).toBe(udp.port); // pid 200 still holds it
    expect(reg.connClosed(c)).toBe(2);
    expect(port(instances.pick(0, WEB))).toBe(-1);
    expect(pool.stats().inUse).toBe(1);
  });

  it('shows a static instance with the protocol of its service, or "any" without one', () => {
    const cfg = parseConfig(
      {
        ...file('20000-20001', 50),
        applications: [
          { aid: 'a', instances: [{ port: 19001 }, { port: 19002, service: 'dns' }] },
          { aid: 'b' },
        ],
      },
      'test.json',
    );
    const instances = new InstanceSet();
    instances.replaceStatic(rulesFromConfig(cfg), staticInstancesFromConfig(cfg));
    const reg = new Registry(cfg, instances, null);
    expect(reg.instances().map((i) => [i.proto, i.vport, i.port])).toEqual([
      ['any', 0, 19001],
      ['udp', 5353, 19002],
    ]);
  });

  it('keeps TCP and UDP client reports apart: the same port number is two sockets', () => {
    const { reg, cfg } = setup();
    const c = new Socket();
    reg.connectReport({ aid: 'a', proto: 'tcp', local: '0.0.0.0:40000', pid: 7 }, c);
    reg.connectReport({ aid: 'b', proto: 'udp', local: '0.0.0.0:40000', pid: 7, fd: 5 }, c);
    expect(reg.localClientAid(cfg.tun.address, 40000, IPPROTO_TCP)).toBe(0);
    expect(reg.localClientAid(cfg.tun.address, 40000, IPPROTO_UDP)).toBe(1);
    // Without a protocol: TCP (the cooperative side asks so).
    expect(reg.localClientAid(cfg.tun.address, 40000)).toBe(0);
    // A newer TCP report of port 40000 changes nothing for UDP.
    reg.connectReport({ aid: 'b', proto: 'tcp', local: '0.0.0.0:40000', pid: 8 }, c);
    expect(reg.localClientAid(cfg.tun.address, 40000, IPPROTO_TCP)).toBe(1);
    reg.connectReport({ aid: 'a', local: '198.19.255.1:40000', pid: 8 }, c); // proto absent: TCP
    expect(reg.localClientAid(cfg.tun.address, 40000, IPPROTO_UDP)).toBe(1);
  });

  it('a UDP client report lives until its socket is released or its connection closes', () => {
    const { reg, cfg } = setup();
    const tun = cfg.tun.address;
    const c1 = new Socket();
    const c2 = new Socket();
    const udp = (aid: string, local: string, pid: number, fd: number, conn: Socket) =>
      reg.connectReport({ aid, proto: 'udp', local, remote: '198.19.0.9:9000', pid, fd }, conn);
    expect(udp('b', '0.0.0.0:41000', 10, 5, c1)).toEqual({ aid: 'b' });
    udp('b', '198.19.255.1:41001', 10, 6, c1);
    udp('a', '0.0.0.0:41002', 20, 5, c2);
    expect([41000, 41001, 41002].map((p) => reg.localClientAid(tun, p, IPPROTO_UDP))).toEqual([
      1, 1, 0,
    ]);
    // The release of (pid 10, fd 5) on c1 ends that socket's report only; the
    // same fd of another process (pid 20 on c2) keeps its own.
    expect(reg.release(c1, { pid: 10, fd: 5, proto: 'udp' })).toEqual({ released: 0, reports: 1 });
    expect(reg.release(c1, { pid: 20, fd: 5 })).toEqual({ released: 0, reports: 0 });
    expect([41000, 41001, 41002].map((p) => reg.localClientAid(tun, p, IPPROTO_UDP))).toEqual([
      -1, 1, 0,
    ]);
    // A report of the same port from another connection takes it over: c1's end no longer touches it.
    udp('a', '198.19.255.1:41001', 30, 9, c2);
    expect(reg.connClosed(c1)).toBe(0); // no registrations; its reports end silently
    expect(reg.localClientAid(tun, 41001, IPPROTO_UDP)).toBe(0);
    expect(reg.connClosed(c2)).toBe(0);
    expect([41000, 41001, 41002].map((p) => reg.localClientAid(tun, p, IPPROTO_UDP))).toEqual([
      -1, -1, -1,
    ]);
  });

  it('a release of a socket that is both bound through vpm and reported ends both', async () => {
    const { reg, cfg, instances } = setup();
    const c = new Socket();
    const { port } = await reg.bind(c, bindArgs('a', 9000, 10, 7, '0.0.0.0', 'udp'));
    reg.connectReport({ aid: 'a', proto: 'udp', local: `0.0.0.0:${port}`, pid: 10, fd: 7 }, c);
    expect(reg.localClientAid(cfg.tun.address, port, IPPROTO_UDP)).toBe(0);
    expect(reg.release(c, { pid: 10, fd: 7, port })).toEqual({ released: 1, reports: 1 });
    expect(reg.localClientAid(cfg.tun.address, port, IPPROTO_UDP)).toBe(-1);
    expect(instances.pick(0, WEB_UDP)).toBe(-1);
  });
});

/** The same services, dual-stack: web and web-udp have an IPv6 address too (tun.ipv6 on). */
const file6 = (range = '20000-20003') => {
  const f = file(range, 50);
  return {
    ...f,
    services: f.services.map((s) =>
      s.name === 'web' || s.name === 'web-udp'
        ? { ...s, address: ['198.19.0.9', '2001:2:0:9::9'] }
        : s,
    ),
  };
};

function setup6(range = '20000-20003') {
  const cfg = parseConfig(file6(range), 'test.json');
  const instances = new InstanceSet();
  instances.replaceStatic(rulesFromConfig(cfg), staticInstancesFromConfig(cfg));
  const [lo, hi] = range.split('-').map(Number) as [number, number];
  const pool = new PortPool(lo, hi, 0, 50);
  return { cfg, instances, pool, reg: new Registry(cfg, instances, pool) };
}

const words = (a: string): Uint32Array => {
  const w = new Uint32Array(4);
  ipv6ToWords(parseIpv6(a)!, w);
  return w;
};

describe('Registry over IPv6', () => {
  it('resolves bind addresses to the instance addresses and families (resolveBindAddress)', () => {
    const { cfg } = setup6();
    const v4only = setup().cfg;
    expect(cfg.tun.ipv6).toBe(true);
    const TUN4 = cfg.tun.address;
    const TUN6 = cfg.tun.address6;
    const r = (c: typeof cfg, addr: string | undefined, v6only = false) => {
      const t = resolveBindAddress(c, addr, v6only);
      return [t.key, t.addr4, t.addr6, t.v4, t.v6];
    };
    expect(r(cfg, undefined)).toEqual(['tun', TUN4, TUN6, true, false]);
    expect(r(cfg, '0.0.0.0')).toEqual(['tun', TUN4, TUN6, true, false]);
    expect(r(cfg, '::')).toEqual(['tun', TUN4, TUN6, true, true]);
    expect(r(cfg, '::', true)).toEqual(['tun', TUN4, TUN6, false, true]);
    expect(r(cfg, '0:0::0', true)).toEqual(['tun', TUN4, TUN6, false, true]);
    // The TUN's own addresses: the wildcard's group, one family.
    expect(r(cfg, '198.19.255.1')).toEqual(['tun', TUN4, TUN6, true, false]);
    expect(r(cfg, '2001:2:0:ff::1')).toEqual(['tun', TUN4, TUN6, false, true]);
    // Other addresses: a group of their own, one family.
    expect(r(cfg, '198.18.1.1')).toEqual(['198.18.1.1', 0xc6120101, null, true, false]);
    expect(r(cfg, '2001:2:0:1:0:0:0:1')).toEqual([
      '2001:2:0:1::1',
      -1,
      parseIpv6('2001:2:0:1::1'),
      false,
      true,
    ]);
    // v4-mapped: the IPv4 address (the library sends it so; a daemon takes either form).
    expect(r(cfg, '::ffff:198.18.1.1')).toEqual(['198.18.1.1', 0xc6120101, null, true, false]);
    expect(r(cfg, '::ffff:198.19.255.1')).toEqual(['tun', TUN4, TUN6, true, false]);
    // Without IPv6 in the configuration: "::" is IPv4 only, IPv6 binds are refused.
    expect(v4only.tun.ipv6).toBe(false);
    expect(r(v4only, '::')).toEqual(['tun', TUN4, null, true, false]);
    for (const [addr, v6only] of [
      ['::', true],
      ['2001:2:0:1::1', false],
    ] as const)
      expect(() => resolveBindAddress(v4only, addr, v6only)).toThrow(
        expect.objectContaining({
          code: 'ERR_BIND_ADDRESS',
          message: expect.stringMatching(/is an IPv6 bind.*tun\.ipv6 is off/),
        }),
      );
    // Loopback and link-local: never reached from the TUN.
    expect(() => resolveBindAddress(cfg, '::1')).toThrow(
      expect.objectContaining({
        code: 'ERR_BIND_ADDRESS',
        message: expect.stringMatching(
          /^::1 is the IPv6 loopback address, which vpm cannot reach: bind to 0\.0\.0\.0, :: or the TUN address 198\.19\.255\.1 or 2001:2:0:ff::1$/,
        ),
      }),
    );
    expect(() => resolveBindAddress(cfg, 'FE80::1')).toThrow(/fe80::1 is an IPv6 link-local/);
    expect(() => resolveBindAddress(cfg, 'febf::1')).toThrow(/link-local/);
    expect(r(cfg, 'fec0::1')[4]).toBe(true); // not link-local (a site-local relic)
    expect(() => resolveBindAddress(cfg, '::ffff:127.0.0.1')).toThrow(/loopback/);
    expect(() => resolveBindAddress(cfg, 'fe80::1%eth0')).toThrow(
      /"fe80::1%eth0" is not an IPv4 or IPv6 address/,
    );
  });

  it('"0.0.0.0", "::" and "::" v6only of one AID share a port; the instance serves the families of its registrations', async () => {
    const { reg, instances, cfg, pool } = setup6();
    const c = new Socket();
    const fam = (k: number) => {
      const i = instances.get(k)!;
      return [i.addr, i.addr6 ? ipv6FromWords(i.addr6) : null];
    };
    // A v6only "::" first: IPv6 only.
    const p1 = await reg.bind(c, { ...bindArgs('a', 9000, 100, 3, '::'), v6only: true });
    expect(instances.pick(0, WEB, 0, 4)).toBe(-1);
    const k = instances.pick(0, WEB, 0, 6);
    expect(k).toBeGreaterThanOrEqual(0);
    expect(fam(k)).toEqual([-1, cfg.tun.address6]);
    // A "0.0.0.0" of the same AID joins it: the same port, the same instance, both families now.
    const p2 = await reg.bind(c, bindArgs('a', 9000, 100, 4, '0.0.0.0'));
    expect(p2.port).toBe(p1.port);
    expect(instances.pick(0, WEB, 0, 4)).toBe(k);
    expect(instances.pick(0, WEB, 0, 6)).toBe(k);
    expect(fam(k)).toEqual([cfg.tun.address, cfg.tun.address6]);
    // "::" dual of another process: still one instance.
    const c3 = new Socket();
    const p3 = await reg.bind(c3, bindArgs('a', 9000, 200, 3, '::'));
    expect(p3.port).toBe(p1.port);
    expect(instances.of(0)).toHaveLength(1);
    expect(pool.stats().inUse).toBe(1);
    // One row per family, each with the registrations that accept it.
    expect(reg.instances().map((i) => [i.aid, i.address, i.port, i.pids, i.registrations])).toEqual(
      [
        ['a', '198.19.255.1', p1.port, [100, 200], 2],
        ['a', '2001:2:0:ff::1', p1.port, [100, 200], 2],
      ],
    );
    // The v6only one leaves: pid 200's "::" still accepts IPv6.
    expect(reg.release(c, { pid: 100, fd: 3 })).toEqual({ released: 1, reports: 0 });
    expect(fam(k)).toEqual([cfg.tun.address, cfg.tun.address6]);
    expect(reg.release(c, { pid: 200, fd: 3 })).toEqual({ released: 0, reports: 0 }); // not c's
    // The dual one leaves too: IPv4 only ("0.0.0.0"), the same index.
    expect(reg.connClosed(c3)).toBe(1);
    expect(fam(k)).toEqual([cfg.tun.address, null]);
    expect(instances.pick(0, WEB, 0, 6)).toBe(-1);
    expect(instances.pick(0, WEB, 0, 4)).toBe(k);
    expect(reg.instances().map((i) => [i.address, i.pids])).toEqual([['198.19.255.1', [100]]]);
  });

  it('an IPv6 address is an IPv6-only group of its own; the v6-only instance goes when its last IPv6 registration does', async () => {
    const { reg, instances, pool } = setup6();
    const c1 = new Socket();
    const c2 = new Socket();
    const any = await reg.bind(c1, bindArgs('a', 9000, 100, 3, '0.0.0.0'));
    const six = await reg.bind(c2, bindArgs('a', 9000, 200, 3, '2001:2:0:1::1'));
    expect(six.port).not.toBe(any.port);
    expect(pool.stats().inUse).toBe(2);
    const port = (k: number) => (k < 0 ? -1 : instances.get(k)!.port);
    expect(port(instances.pick(0, WEB, 0, 4))).toBe(any.port);
    expect(port(instances.pick(0, WEB, 0, 6))).toBe(six.port);
    expect(ipv6FromWords(instances.get(instances.pick(0, WEB, 0, 6))!.addr6!)).toBe(
      parseIpv6('2001:2:0:1::1'),
    );
    expect(
      reg
        .instances()
        .filter((i) => i.source === 'registered')
        .map((i) => [i.address, i.port]),
    ).toEqual([
      ['198.19.255.1', any.port],
      ['2001:2:0:1::1', six.port],
    ]);
    expect(reg.connClosed(c2)).toBe(1);
    expect(instances.pick(0, WEB, 0, 6)).toBe(-1);
    expect(port(instances.pick(0, WEB, 0, 4))).toBe(any.port);
  });

  it('"::" v6only and "0.0.0.0" in one group: the last IPv6 one leaving makes the instance IPv4 only, at the same index', async () => {
    const { reg, instances, cfg } = setup6();
    const c1 = new Socket();
    const c2 = new Socket();
    await reg.bind(c1, bindArgs('a', 9000, 100, 3, '0.0.0.0'));
    await reg.bind(c2, { ...bindArgs('a', 9000, 200, 3, '::'), v6only: true });
    const k = instances.pick(0, WEB, 0, 6);
    expect(k).toBeGreaterThanOrEqual(0);
    instances.markDown(k, 1e12, 0);
    expect(reg.connClosed(c2)).toBe(1);
    expect(instances.pick(0, WEB, 0, 6)).toBe(-1);
    expect(instances.get(k)).toMatchObject({ addr: cfg.tun.address, addr6: null });
    // The same instance: its health stays.
    expect(instances.health(k, 0).up).toBe(false);
    expect(reg.instances().map((i) => i.address)).toEqual(['198.19.255.1']);
  });

  it('remembers IPv6 local clients by address and port (exact words), or by the port alone', () => {
    const { reg } = setup6();
    const c = new Socket();
    const A = '2001:2:0:ff::1';
    // Another address with the same fold of its words (w0^w1^w2^w3) as A: its own report.
    const wa = words(A);
    const twin = new Uint32Array([wa[0]! ^ 1, wa[1]! ^ 1, wa[2]!, wa[3]!]);
    const twinText = formatIpv6(ipv6FromWords(twin));
    reg.connectReport({ aid: 'b', proto: 'tcp', local: `[${A}]:40000`, pid: 7 }, c);
    reg.connectReport({ aid: 'a', proto: 'tcp', local: `[${twinText}]:40000`, pid: 7 }, c);
    reg.connectReport({ aid: 'b', proto: 'tcp', local: '[::]:40005', pid: 7 }, c);
    reg.connectReport({ aid: 'b', proto: 'udp', local: `[${A}]:40000`, pid: 7, fd: 4 }, c);
    expect(reg.localClientAid6(wa, 40000, IPPROTO_TCP)).toBe(1);
    expect(reg.localClientAid6(twin, 40000, IPPROTO_TCP)).toBe(0);
    expect(reg.localClientAid6(words('2001:2:0:ff::3'), 40000, IPPROTO_TCP)).toBe(-1);
    expect(reg.localClientAid6(wa, 40001, IPPROTO_TCP)).toBe(-1);
    // "[::]:P" is the port alone, for either family.
    expect(reg.localClientAid6(words('2001:2:0:ff::3'), 40005, IPPROTO_TCP)).toBe(1);
    expect(reg.localClientAid(0xc6130001, 40005, IPPROTO_TCP)).toBe(1);
    // An IPv6 report never answers for an IPv4 client (nor the other way round).
    expect(reg.localClientAid(0, 40000, IPPROTO_TCP)).toBe(-1);
    expect(reg.localClientAid6(wa, 40000, IPPROTO_UDP)).toBe(1);
    // A v4-mapped local address is the IPv4 client.
    reg.connectReport({ aid: 'a', proto: 'tcp', local: '[::ffff:198.19.255.1]:40010', pid: 7 }, c);
    expect(reg.localClientAid(0xc613ff01, 40010, IPPROTO_TCP)).toBe(0);
    // A newer report of the same address and port replaces the older.
    reg.connectReport({ aid: 'a', proto: 'tcp', local: `[${A}]:40000`, pid: 8 }, c);
    expect(reg.localClientAid6(wa, 40000, IPPROTO_TCP)).toBe(0);
    expect(reg.localClientAid6(twin, 40000, IPPROTO_TCP)).toBe(0);
    // The UDP report ends with its socket's release; the TCP ones stay.
    expect(reg.release(c, { pid: 7, fd: 4 })).toEqual({ released: 0, reports: 1 });
    expect(reg.localClientAid6(wa, 40000, IPPROTO_UDP)).toBe(-1);
    expect(() => reg.connectReport({ aid: 'a', local: '[2001:2::1]:0' })).toThrow(
      /"local" must be/,
    );
    expect(() => reg.connectReport({ aid: 'a', local: '[nonsense]:1' })).toThrow(/"local" must be/);
  });
});
