import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import {
  hostPlanFromConfig,
  otherInstanceAddrs,
  rulesFromConfig,
  staticInstancesFromConfig,
} from '../../src/daemon/rules-from-config.js';

const load = (instances: Record<string, unknown>[][]) =>
  parseConfig(
    {
      services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
      applications: instances.map((inst, i) => ({ aid: `a${i}`, instances: inst })),
      default: { refuse: true },
      control: { socket: '/run/vpm/test.sock' },
    },
    'vpm.json',
  );

describe('otherInstanceAddrs', () => {
  it('lists the instance addresses other than tun.address and the wildcard, with their ports merged', () => {
    const cfg = load([
      [{ port: 19001 }, { address: '198.18.1.1', port: 19003 }],
      [
        { address: '198.18.1.1', port: 19004 },
        { address: '198.18.2.1', port: 19010 },
        { address: '198.19.255.1', port: 19011 },
        { address: '198.18.1.1', port: 19008 },
      ],
    ]);
    expect(otherInstanceAddrs(cfg)).toEqual([
      {
        addr: '198.18.1.1',
        ports: [
          { lo: 19003, hi: 19004 },
          { lo: 19008, hi: 19008 },
        ],
      },
      { addr: '198.18.2.1', ports: [{ lo: 19010, hi: 19010 }] },
    ]);
    expect(hostPlanFromConfig(cfg, 'vpm0').otherInstanceAddrs).toEqual(otherInstanceAddrs(cfg));
  });

  it('is empty when every instance is on tun.address', () => {
    expect(otherInstanceAddrs(load([[{ port: 19001 }], [{ port: 19002 }]]))).toEqual([]);
  });
});

describe('IPv6 in the data plane form (the contract: four big-endian words, -1 for no IPv4)', () => {
  const cfg = parseConfig(
    {
      services: [
        { name: 'web', address: ['198.19.0.9', '2001:2::9'], port: 9000 },
        { name: 'six', address: '2001:2::a', port: 9001, protocol: 'udp' },
      ],
      applications: [
        {
          aid: 'a',
          instances: [{ port: 19001 }, { address: '2001:2:0:5::5', port: 19002 }],
        },
      ],
      selectors: [
        { clients: ['198.18.1.0/24', '2001:2:1::/48'], aid: 'a' },
        { clients: ['198.18.2.0/24'], aid: 'a' },
        { aid: 'a' },
      ],
      default: { aid: 'a' },
      control: { socket: '/run/vpm/test.sock' },
    },
    'vpm.json',
  );

  it('services: addr -1 without IPv4, addr6 as words', () => {
    const r = rulesFromConfig(cfg);
    expect(r.services.map((s) => [s.addr, s.addr6 && [...s.addr6]])).toEqual([
      [0xc6130009, [0x20010002, 0, 0, 9]],
      [-1, [0x20010002, 0, 0, 0xa]],
    ]);
  });

  it('selectors: 8 words per IPv6 CIDR (base, mask), anyClient only without clients', () => {
    const r = rulesFromConfig(cfg);
    expect([...r.selectors[0]!.cidr6Words]).toEqual([
      0x20010002, 0x00010000, 0, 0, 0xffffffff, 0xffff0000, 0, 0,
    ]);
    expect(r.selectors.map((s) => [s.anyClient, s.cidrBase.length, s.cidr6Words.length])).toEqual([
      [false, 1, 8],
      [false, 1, 0],
      [true, 0, 0],
    ]);
  });

  it('instances: no address serves both families, an IPv6 address only IPv6', () => {
    expect(staticInstancesFromConfig(cfg).map((i) => [i.addr, i.addr6 && [...i.addr6]])).toEqual([
      [0xc613ff01, [0x20010002, 0xff, 0, 1]],
      [-1, [0x20010002, 5, 0, 5]],
    ]);
  });

  it('the host plan has the IPv6 recipe: TUN and local-client address, VIPs, other instance addresses', () => {
    const plan = hostPlanFromConfig(cfg, 'vpm0');
    expect(plan.vips).toEqual(['198.19.0.9']);
    expect(plan.ipv6).toEqual({
      tunAddr: '2001:2:0:ff::1',
      localClientAddr: '2001:2:0:ff::2',
      vips: ['2001:2::9', '2001:2::a'],
      otherInstanceAddrs: [{ addr: '2001:2:0:5::5', ports: [{ lo: 19002, hi: 19002 }] }],
      peerVips: [],
    });
    expect(hostPlanFromConfig(load([[{ port: 19001 }]]), 'vpm0').ipv6).toBeNull();
  });

  it('cooperative client side: the host plan routes each peer VIP by the way to its peer of the same family, else to itself', () => {
    const peerCfg = parseConfig(
      {
        services: [
          { name: 'web', address: ['198.19.0.9', '2001:2:0:9::9'], port: 9000, peer: 'v6peer' },
          { name: 'db', address: ['198.19.0.10', '2001:2:0:9::a'], port: 9000, peer: 'v4peer' },
        ],
        applications: [{ aid: 'a1' }],
        default: { aid: 'a1' },
        cooperative: {
          name: 'client',
          peers: [
            { name: 'v6peer', address: '2001:2:0:20::2', key: 'ab'.repeat(32) },
            { name: 'v4peer', address: '198.18.20.2', key: 'cd'.repeat(32) },
          ],
        },
      },
      'peers.json',
    );
    const plan = hostPlanFromConfig(peerCfg, 'vpm0');
    // The way to a VIP is the way to its peer's address when that is of the VIP's
    // family, else the host's own way to the VIP (looked up before vpm routes it).
    expect(plan.peerVips).toEqual([
      { vip: '198.19.0.9', peer: '198.19.0.9' },
      { vip: '198.19.0.10', peer: '198.18.20.2' },
    ]);
    expect(plan.ipv6?.peerVips).toEqual([
      { vip: '2001:2:0:9::9', peer: '2001:2:0:20::2' },
      { vip: '2001:2:0:9::a', peer: '2001:2:0:9::a' },
    ]);
  });
});
