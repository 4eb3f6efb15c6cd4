/**
 * IPv6 in the config (issue 12): addresses and CIDRs of either family, any RFC
 * 4291 text form in, RFC 5952 out, the resolved tun.ipv6, the dual-family
 * service, the mixed-family refusal, and the same field-naming errors as IPv4.
 */

import { describe, expect, it } from 'vitest';
import { type Config, ConfigError, parseConfig } from '../../src/config/config.js';
import { configToJson, configWarnings, summarizeConfig } from '../../src/config/summary.js';
import { parseIpv4, parseIpv6 } from '../../src/wire/address.js';

// biome-ignore lint/suspicious/noExplicitAny: tests edit arbitrary JSON at arbitrary paths
type Json = any;

const v4 = (s: string) => parseIpv4(s)!;
const v6 = (s: string) => parseIpv6(s)!;

/** The smallest IPv6 config of the issue: one IPv6 service, one instance port, a default AID. */
function smallest(): Json {
  return {
    services: [{ name: 'web', address: '2001:2::9', port: 9000 }],
    applications: [{ aid: 'a', instances: [{ port: 19001 }] }],
    default: { aid: 'a' },
  };
}

function load(obj: Json): Config {
  return parseConfig(obj, 'config.json');
}

/** The message lines of the ConfigError `obj` gives. */
function errors(obj: Json): string[] {
  try {
    parseConfig(obj, 'config.json');
  } catch (e) {
    if (e instanceof ConfigError) return e.message.split('\n');
    throw e;
  }
  throw new Error('the config was accepted');
}

function edited(edit: (c: Json) => void, base: Json = smallest()): Json {
  edit(base);
  return base;
}

describe('the smallest IPv6 config', () => {
  it('loads with defaults: IPv6 on, the TUN addresses of 2001:2:0:ff::/64, the instance on both families', () => {
    const c = load(smallest());
    expect(c.tun.ipv6).toBe(true);
    expect(c.tun.address6).toBe(v6('2001:2:0:ff::1'));
    expect(c.tun.localClientAddress6).toBe(v6('2001:2:0:ff::2'));
    expect(c.services).toEqual([
      {
        index: 0,
        name: 'web',
        address: null,
        address6: v6('2001:2::9'),
        port: 9000,
        protocol: 'tcp',
        peer: null,
      },
    ]);
    expect(c.applications[0]!.instances).toEqual([
      {
        address: v4('198.19.255.1'),
        address6: v6('2001:2:0:ff::1'),
        port: 19001,
        serviceIndex: null,
      },
    ]);
    expect(configWarnings(c)).toEqual([]);
  });

  it('check-config prints its addresses in RFC 5952 form', () => {
    const c = load(
      edited((o) => {
        o.services[0].address = '2001:0002:0000:0000:0000:0000:0000:0009';
        o.tun = { address6: '2001:2:0:FF:0:0:0:1' };
      }),
    );
    expect(summarizeConfig(c)).toEqual([
      'tun vpm0: address 198.19.255.1, local clients as 198.19.255.2; IPv6: address 2001:2:0:ff::1, local clients as 2001:2:0:ff::2, mtu 1500',
      'services (1):',
      '  web  2001:2::9 tcp/9000',
      'applications (1):',
      '  a  198.19.255.1:19001 [2001:2:0:ff::1]:19001',
      'selectors (0, first match wins):',
      'default: -> a',
    ]);
  });

  it('an IPv4 config stays IPv4: tun.ipv6 off, instances without an IPv6 address', () => {
    const c = load(edited((o) => (o.services[0].address = '198.19.0.9')));
    expect(c.tun.ipv6).toBe(false);
    expect(c.applications[0]!.instances[0]!.address6).toBeNull();
    expect(configToJson(c).tun).not.toHaveProperty('address6');
  });
});

describe('tun.ipv6 is on iff the file has an IPv6 address somewhere', () => {
  const v4only = () => edited((o) => (o.services[0].address = '198.19.0.9'));
  it.each<[string, (o: Json) => void]>([
    ['tun.address6 given', (o) => (o.tun = { address6: '2001:2:0:ff::1' })],
    ['tun.localClientAddress6 given', (o) => (o.tun = { localClientAddress6: '2001:2:0:ff::7' })],
    ['a service address', (o) => (o.services[0].address = ['198.19.0.9', '2001:2::9'])],
    [
      'an instance address',
      (o) => o.applications[0].instances.push({ address: '2001:2::5', port: 19002 }),
    ],
    ['a selector CIDR', (o) => (o.selectors = [{ clients: ['2001:2:1::/48'], aid: 'a' }])],
    [
      'a cooperative peer',
      (o) =>
        (o.cooperative = { peers: [{ name: 'b', address: '2001:2::b', key: 'ab'.repeat(32) }] }),
    ],
    [
      'the cooperative listen address',
      (o) =>
        (o.cooperative = {
          listen: '[2001:2::a]:7070',
          peers: [{ name: 'b', key: 'ab'.repeat(32) }],
        }),
    ],
  ])('%s', (_what, edit) => {
    expect(load(v4only()).tun.ipv6).toBe(false);
    expect(load(edited(edit, v4only())).tun.ipv6).toBe(true);
  });

  it('metrics on [::1] alone does not (it needs no IPv6 on the TUN)', () => {
    const c = load(edited((o) => (o.metrics = { listen: '[::1]:9464' }), v4only()));
    expect(c.tun.ipv6).toBe(false);
    expect(c.metrics.listen).toEqual({ address: 1n, port: 9464 });
  });
});

describe('addresses of either family', () => {
  it('a dual-stack service: one address of each family, in either order', () => {
    for (const address of [
      ['198.19.0.9', '2001:2::9'],
      ['2001:2::9', '198.19.0.9'],
    ]) {
      const c = load(edited((o) => (o.services[0].address = address)));
      expect(c.services[0]).toMatchObject({ address: v4('198.19.0.9'), address6: v6('2001:2::9') });
    }
  });

  it('any RFC 4291 form in, RFC 5952 out, and configToJson parses back to an equal Config', () => {
    const c = load({
      tun: { address6: '2001:2:0:FF:0:0:0:1', localClientAddress6: '2001:2:0:ff:0::2' },
      services: [
        { name: 'web', address: ['198.19.0.9', '2001:0002::0009'], port: 9000 },
        { name: 'dns', address: '2001:2::53', port: 53, protocol: 'udp' },
      ],
      applications: [
        {
          aid: 'a',
          instances: [
            { port: 19001 },
            { address: '198.18.0.5', port: 19002, service: 'web' },
            { address: '2001:2:0:5::5', port: 19003 },
          ],
        },
      ],
      selectors: [
        { clients: ['198.18.1.0/24', '2001:2:1::/48', '2001:2:2:0:0:0:0:0/64'], aid: 'a' },
      ],
      default: { aid: 'a' },
      cooperative: {
        listen: '[2001:2:0:0::a]:7070',
        peers: [{ name: 'b', address: '2001:2:0:0:0:0:0:b', key: 'ab'.repeat(32) }],
      },
      metrics: { listen: '[0:0:0:0:0:0:0:1]:9464' },
    });
    const j = configToJson(c) as Json;
    expect(j.tun.address6).toBe('2001:2:0:ff::1');
    expect(j.tun.localClientAddress6).toBe('2001:2:0:ff::2');
    expect(j.services.map((s: Json) => s.address)).toEqual([
      ['198.19.0.9', '2001:2::9'],
      '2001:2::53',
    ]);
    // No address: both TUN addresses; an explicit one: its family only.
    expect(j.applications[0].instances.map((i: Json) => i.address)).toEqual([
      undefined,
      '198.18.0.5',
      '2001:2:0:5::5',
    ]);
    expect(j.selectors[0].clients).toEqual(['198.18.1.0/24', '2001:2:1::/48', '2001:2:2::/64']);
    expect(j.cooperative.listen).toBe('[2001:2::a]:7070');
    expect(j.cooperative.peers[0].address).toBe('2001:2::b');
    expect(j.metrics.listen).toBe('[::1]:9464');
    expect(load(j)).toEqual(c);
    expect(c.selectors[0]!.clients).toEqual([
      { base: v4('198.18.1.0'), mask: 0xffffff00, prefix: 24 },
    ]);
    expect(c.selectors[0]!.clients6).toEqual([
      { base: v6('2001:2:1::'), prefix: 48 },
      { base: v6('2001:2:2::'), prefix: 64 },
    ]);
  });

  it('a selector without clients matches both families: both lists null', () => {
    const c = load(edited((o) => (o.selectors = [{ service: 'web', aid: 'a' }])));
    expect(c.selectors[0]).toMatchObject({ clients: null, clients6: null });
  });

  it('a selector with IPv4 CIDRs only has an empty IPv6 list (it never matches an IPv6 client)', () => {
    const c = load(edited((o) => (o.selectors = [{ clients: ['198.18.1.0/24'], aid: 'a' }])));
    expect(c.selectors[0]).toMatchObject({ clients6: [] });
  });
});

describe('errors name the field and the value, as for IPv4', () => {
  const cases: [string, (o: Json) => void, string][] = [
    [
      'a zone id',
      (o) => (o.services[0].address = 'fe80::9%eth0'),
      'config.json: services[0].address: "fe80::9%eth0" has a zone id (%eth0): vpm takes no zone ids, which name an interface rather than an address; use a global or unique local address',
    ],
    [
      'brackets',
      (o) => (o.applications[0].instances[0].address = '[2001:2::5]'),
      'config.json: applications[0].instances[0].address: "[2001:2::5]" is in brackets: write the address without them (brackets belong to "[ADDRESS]:PORT")',
    ],
    [
      'a prefix on an address',
      (o) => (o.tun = { address6: '2001:2:0:ff::1/64' }),
      'config.json: tun.address6: "2001:2:0:ff::1/64" has a prefix length: an address is written without one',
    ],
    [
      'not an address',
      (o) => (o.services[0].address = '2001:2::9::1'),
      "config.json: services[0].address: \"2001:2::9::1\" is not a valid IPv6 address (eight groups of 1-4 hex digits separated by ':', one '::' at most, optionally ending in a dotted quad)",
    ],
    [
      'v4-mapped',
      (o) => (o.services[0].address = '::ffff:198.19.0.9'),
      'config.json: services[0].address: "::ffff:198.19.0.9" is a v4-mapped IPv6 address (::ffff:0:0/96), an IPv4 address in IPv6 form: use the IPv4 form "198.19.0.9"',
    ],
    [
      'v4-mapped in hex',
      (o) =>
        (o.cooperative = {
          peers: [{ name: 'b', address: '::ffff:c612:2', key: 'ab'.repeat(32) }],
        }),
      'config.json: cooperative.peers[0].address: "::ffff:c612:2" is a v4-mapped IPv6 address (::ffff:0:0/96), an IPv4 address in IPv6 form: use the IPv4 form "198.18.0.2"',
    ],
    [
      'loopback',
      (o) => (o.services[0].address = '::1'),
      'config.json: services[0].address: "::1" is the loopback address (::1) and cannot be a service address',
    ],
    [
      'multicast',
      (o) => (o.applications[0].instances[0].address = 'ff02::1'),
      'config.json: applications[0].instances[0].address: "ff02::1" is a multicast address (ff00::/8) and cannot be an instance address',
    ],
    [
      'link-local',
      (o) => (o.tun = { address6: 'fe80::1' }),
      'config.json: tun.address6: "fe80::1" is a link-local address (fe80::/10), which means something only with a zone id and cannot be the TUN address',
    ],
    [
      'an IPv4 address where only IPv6 goes',
      (o) => (o.tun = { address6: '198.19.255.1' }),
      'config.json: tun.address6: "198.19.255.1" is not valid here: expected IPv6 address, e.g. "2001:2:0:ff::1"',
    ],
    [
      'two addresses of one family',
      (o) => (o.services[0].address = ['2001:2::9', '2001:2::10']),
      'config.json: services[0].address[1]: "2001:2::10" is a second IPv6 address; a service has at most one address of each family (two services for two addresses)',
    ],
    [
      'more than two addresses',
      (o) => (o.services[0].address = ['2001:2::9', '198.19.0.9', '198.19.0.10']),
      'config.json: services[0].address: the list has 3 items, expected at most 2',
    ],
    [
      'a bad element of the pair',
      (o) => (o.services[0].address = ['198.19.0.9', '2001:2::9%1']),
      'config.json: services[0].address[1]: "2001:2::9%1" has a zone id (%1): vpm takes no zone ids, which name an interface rather than an address; use a global or unique local address',
    ],
    [
      'the service address is the TUN address',
      (o) => (o.services[0].address = '2001:2:0:ff::1'),
      'config.json: services[0].address: "2001:2:0:ff::1" is tun.address6; a service address must be a different address routed to the TUN',
    ],
    [
      'in another text form too',
      (o) => (o.services[0].address = '2001:2:0:FF:0:0:0:2'),
      'config.json: services[0].address: "2001:2:0:FF:0:0:0:2" is tun.localClientAddress6; a service address must be a different address',
    ],
    [
      'an instance on the VIP',
      (o) => (o.applications[0].instances[0].address = '2001:2::0:9'),
      'config.json: applications[0].instances[0].address: "2001:2::0:9" is the address of service "web", which is routed to the TUN; an instance must listen on a local address',
    ],
    [
      'an instance on the local client address',
      (o) => (o.applications[0].instances[0].address = '2001:2:0:ff::2'),
      'config.json: applications[0].instances[0].address: "2001:2:0:ff::2" is tun.localClientAddress6, which is never assigned; an instance must listen on a local address',
    ],
    [
      'the two TUN addresses equal',
      (o) => (o.tun = { localClientAddress6: '2001:2:0:ff::1' }),
      'config.json: tun.localClientAddress6: "2001:2:0:ff::1" is also tun.address6; the local client address must be a different, unassigned address',
    ],
    [
      'a CIDR with host bits (the network in RFC 5952 form)',
      (o) => (o.selectors = [{ clients: ['2001:2:1:0:0:0:0:1/48'], aid: 'a' }]),
      'config.json: selectors[0].clients[0]: "2001:2:1:0:0:0:0:1/48" has host bits set beyond the /48 prefix (the network is 2001:2:1::/48)',
    ],
    [
      'a CIDR prefix above 128',
      (o) => (o.selectors = [{ clients: ['2001:2::/129'], aid: 'a' }]),
      'config.json: selectors[0].clients[0]: "2001:2::/129" is not a valid CIDR: the prefix length must be 0-128',
    ],
    [
      'a CIDR prefix with a leading zero',
      (o) => (o.selectors = [{ clients: ['2001:2::/048'], aid: 'a' }]),
      'config.json: selectors[0].clients[0]: "2001:2::/048" is not a valid CIDR: the prefix length must be 0-128',
    ],
    [
      'a CIDR that is no address',
      (o) => (o.selectors = [{ clients: ['2001:2:::/48'], aid: 'a' }]),
      'config.json: selectors[0].clients[0]: "2001:2:::/48" is not a valid CIDR: 2001:2::: is not an IPv6 address',
    ],
    [
      'a v4-mapped CIDR',
      (o) => (o.selectors = [{ clients: ['::ffff:198.18.1.0/120'], aid: 'a' }]),
      'config.json: selectors[0].clients[0]: "::ffff:198.18.1.0/120" is a v4-mapped IPv6 range (in ::ffff:0:0/96): write the IPv4 CIDR "198.18.1.0/24"',
    ],
    [
      'an IPv6 listen address without brackets',
      (o) =>
        (o.cooperative = {
          listen: '2001:2::a:7070',
          peers: [{ name: 'b', key: 'ab'.repeat(32) }],
        }),
      'config.json: cooperative.listen: "2001:2::a:7070" is not valid here: expected "ADDRESS:PORT" or "[IPv6]:PORT", e.g. "198.18.0.2:7070" or "[2001:2::2]:7070"',
    ],
    [
      'a listen address with a zone id',
      (o) =>
        (o.cooperative = {
          listen: '[fe80::a%eth0]:7070',
          peers: [{ name: 'b', key: 'ab'.repeat(32) }],
        }),
      'config.json: cooperative.listen: "[fe80::a%eth0]:7070" has a zone id (%eth0): vpm takes no zone ids, which name an interface rather than an address; use a global or unique local address',
    ],
    [
      'metrics on a non-loopback IPv6 address',
      (o) => (o.metrics = { listen: '[2001:2::1]:9464' }),
      'config.json: metrics.listen: "[2001:2::1]:9464" is not a loopback address; metrics are served on 127.0.0.0/8 or [::1] only',
    ],
    [
      'metrics on a port out of range',
      (o) => (o.metrics = { listen: '[::1]:70000' }),
      'config.json: metrics.listen: "[::1]:70000": port 70000 is out of range 1-65535',
    ],
    [
      'the same IPv6 service twice',
      (o) => o.services.push({ name: 'web2', address: '2001:2:0::9', port: 9000 }),
      'config.json: services[1].port: 2001:2:0::9 tcp/9000 is already services[0] ("web")',
    ],
  ];
  it.each(cases)('%s', (_what, edit, message) => {
    expect(errors(edited(edit))).toEqual([message]);
  });

  it('the same VIP and port on both families are two endpoints, not a collision', () => {
    const c = load(
      edited((o) => o.services.push({ name: 'web4', address: '198.19.0.9', port: 9000 })),
    );
    expect(c.services).toHaveLength(2);
  });
});

describe('mixed-family translation is refused', () => {
  it('an IPv6 service whose AID has only IPv4 instances', () => {
    expect(errors(edited((o) => (o.applications[0].instances[0].address = '198.18.0.5')))).toEqual([
      'config.json: services[0].address: service "web" has an IPv6 address, and the default sends its connections to application "a", whose instances for it are all IPv4: vpm does not translate between families (an IPv6 client reaches only instances with an IPv6 address); give a an instance without an address (it then serves both families) or one with an IPv6 address',
    ]);
  });

  it('the IPv4 half of a dual-stack service whose selected AID listens on IPv6 only', () => {
    const o = edited((c) => {
      c.services[0].address = ['198.19.0.9', '2001:2::9'];
      c.applications.push({ aid: 'b', instances: [{ address: '2001:2::5', port: 19002 }] });
      c.selectors = [{ clients: ['198.18.2.0/24', '2001:2:2::/48'], aid: 'b' }];
    });
    expect(errors(o)).toEqual([
      'config.json: services[0].address: service "web" has an IPv4 address, and selectors[0] sends its connections to application "b", whose instances for it are all IPv6: vpm does not translate between families (an IPv4 client reaches only instances with an IPv4 address); give b an instance without an address (it then serves both families) or one with an IPv4 address',
    ]);
    // A selector that only IPv6 clients can match sends no IPv4 client there.
    o.selectors[0].clients = ['2001:2:2::/48'];
    expect(load(o).selectors[0]!.aid).toBe('b');
  });

  it('is fine with a pool (instances register at run time), or an instance of each family', () => {
    expect(
      load(
        edited((o) => {
          o.applications[0].instances[0].address = '198.18.0.5';
          o.pool = { range: '20000-20099' };
        }),
      ).pool,
    ).not.toBeNull();
    expect(
      load(
        edited((o) => {
          o.applications[0].instances = [
            { address: '198.18.0.5', port: 19001 },
            { address: '2001:2::5', port: 19002 },
          ];
        }),
      ).applications[0]!.instances,
    ).toHaveLength(2);
  });
});
