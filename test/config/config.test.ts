import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/base/paths.js';
import {
  type Config,
  ConfigError,
  configSchemaPath,
  loadConfig,
  parseConfig,
  parseConfigText,
} from '../../src/config/config.js';
import { configToJson, configWarnings, summarizeConfig } from '../../src/config/summary.js';
import { parseIpv4, parseIpv6 } from '../../src/wire/address.js';

const EXAMPLE = join(packageRoot(), 'docs', 'examples', 'two-tenants.json');
const example = (): Json => JSON.parse(readFileSync(EXAMPLE, 'utf8'));
const ip = (s: string) => parseIpv4(s)!;

/** A config being edited by a test: arbitrary JSON, reached into freely. */
// biome-ignore lint/suspicious/noExplicitAny: tests edit arbitrary JSON at arbitrary paths
type Json = any;

/** The parts of the schema the tests below read. */
interface SchemaNode {
  description?: string;
  default?: unknown;
  properties?: Record<string, SchemaNode>;
  required?: string[];
  items?: SchemaNode;
  oneOf?: SchemaNode[];
}

/** The smallest valid config. */
function minimal(): Record<string, unknown> {
  return {
    services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
    applications: [{ aid: 'a', instances: [{ port: 19001 }] }],
  };
}

/** The ConfigError that parsing `obj` throws. */
function failure(obj: unknown): ConfigError {
  try {
    parseConfig(obj, 'config.json');
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('the config was accepted');
}

/** Apply `edit` to a copy of the example and return the message lines. */
function errorsOf(edit: (c: Json) => void, base = example()): string[] {
  edit(base);
  const e = failure(base);
  expect(e.code).toBe('ERR_CONFIG_INVALID');
  expect(e.exitCode).toBe(2);
  return e.message.split('\n');
}

const tmp = mkdtempSync(join(tmpdir(), 'vpm-config-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('the example config', () => {
  it('is valid and resolves to numeric forms', () => {
    const c = loadConfig(EXAMPLE);
    expect(c.source).toBe(EXAMPLE);
    expect(c.tun).toEqual({
      name: 'vpm0',
      address: ip('198.19.255.1'),
      localClientAddress: ip('198.19.255.2'),
      // The IPv6 defaults, unused: the file has no IPv6 address.
      address6: parseIpv6('2001:2:0:ff::1'),
      localClientAddress6: parseIpv6('2001:2:0:ff::2'),
      ipv6: false,
      mtu: 1500,
      txQueueLen: 10000,
      batchSize: 64,
      queuesSetting: 1,
      queues: 1,
      routeTable: 100,
      rulePriority: 100,
      offloads: 'auto',
      verifyChecksums: true,
    });
    expect(c.deprecated).toEqual([]);
    expect(c.services).toEqual([
      {
        index: 0,
        name: 'web',
        address: ip('198.19.0.9'),
        address6: null,
        port: 9000,
        protocol: 'tcp',
        peer: null,
      },
    ]);
    expect(c.applications).toEqual([
      {
        index: 0,
        aid: 'tenant-a',
        instances: [
          { address: ip('198.19.255.1'), address6: null, port: 19001, serviceIndex: null },
        ],
        executables: [],
        users: null,
      },
      {
        index: 1,
        aid: 'tenant-b',
        instances: [
          { address: ip('198.19.255.1'), address6: null, port: 19002, serviceIndex: null },
        ],
        executables: [],
        users: null,
      },
    ]);
    expect(c.selectors).toEqual([
      {
        index: 0,
        service: 'web',
        serviceIndex: 0,
        clients: [{ base: ip('198.18.1.0'), mask: 0xffffff00, prefix: 24 }],
        clients6: [],
        clientPorts: { lo: 1024, hi: 65535 },
        aid: 'tenant-a',
        aidIndex: 0,
      },
      {
        index: 1,
        service: null,
        serviceIndex: null,
        clients: [
          { base: ip('198.18.2.0'), mask: 0xffffff00, prefix: 24 },
          { base: ip('198.18.3.7'), mask: 0xffffffff, prefix: 32 },
        ],
        clients6: [],
        clientPorts: null,
        aid: 'tenant-b',
        aidIndex: 1,
      },
    ]);
    expect(c.default).toEqual({ refuse: false, aid: 'tenant-a', aidIndex: 0 });
    expect(c.metrics.listen).toBeNull();
    expect(configWarnings(c)).toEqual([]);
  });

  it('is deeply frozen', () => {
    const c = loadConfig(EXAMPLE);
    const check = (o: unknown, path: string) => {
      if (typeof o !== 'object' || o === null) return;
      expect(Object.isFrozen(o), path).toBe(true);
      for (const [k, v] of Object.entries(o)) check(v, `${path}.${k}`);
    };
    check(c, 'config');
    expect(() => {
      (c.selectors[0]!.clients as unknown as { base: number }[])[0]!.base = 0;
    }).toThrow(TypeError);
    expect(() => {
      (c.applications[0]!.instances as unknown[]).push({});
    }).toThrow(TypeError);
  });

  it('is what check-config summarizes', () => {
    expect(summarizeConfig(loadConfig(EXAMPLE))).toEqual([
      'tun vpm0: address 198.19.255.1, local clients as 198.19.255.2, mtu 1500',
      'services (1):',
      '  web  198.19.0.9 tcp/9000',
      'applications (2):',
      '  tenant-a  198.19.255.1:19001',
      '  tenant-b  198.19.255.1:19002',
      'selectors (2, first match wins):',
      '  1. service web, clients 198.18.1.0/24, client ports 1024-65535 -> tenant-a',
      '  2. any service, clients 198.18.2.0/24 198.18.3.7/32 -> tenant-b',
      'default: -> tenant-a',
    ]);
  });
});

describe('defaults', () => {
  it('fill in everything the file leaves out', () => {
    const c = parseConfig(minimal(), 'min.json');
    expect(c.tun.name).toBe('vpm0');
    expect(c.tun.address).toBe(ip('198.19.255.1'));
    expect(c.tun.localClientAddress).toBe(ip('198.19.255.2'));
    expect(c.services[0]!.protocol).toBe('tcp');
    expect(c.applications[0]!.instances[0]!.address).toBe(c.tun.address);
    expect(c.selectors).toEqual([]);
    expect(c.default).toEqual({ refuse: true });
    expect(c.limits).toEqual({
      maxFlows: 65536,
      embryonicFlows: 16384,
      heldFragments: 256,
      heldFragmentBytes: 1048576,
      icmpPerSecond: 1000,
    });
    expect(c.timeouts).toEqual({
      embryonicMs: 10000,
      establishedIdleMs: 3600000,
      closingMs: 60000,
      timeWaitMs: 10000,
      udpUnrepliedMs: 30000,
      udpAssuredMs: 120000,
      fragmentMs: 5000,
    });
    expect(c.control.socket).toBe('/run/vpm/vpm0.sock');
    expect(c.metrics.listen).toBeNull();
    expect(c.log.level).toBe('info');
  });

  it('derive the control socket and instance addresses from the TUN', () => {
    const o = minimal();
    o.tun = { name: 'mux7', address: '198.18.0.1' };
    const c = parseConfig(o, 'min.json');
    expect(c.control.socket).toBe('/run/vpm/mux7.sock');
    expect(c.applications[0]!.instances[0]!.address).toBe(ip('198.18.0.1'));
  });

  it('allow an application with no instance (no live instance yet)', () => {
    const o = minimal();
    o.applications = [{ aid: 'a', instances: [] }, { aid: 'b' }];
    o.default = { aid: 'b' };
    const c = parseConfig(o, 'min.json');
    expect(c.applications.map((a) => a.instances)).toEqual([[], []]);
    expect(configWarnings(c)).toEqual([
      'applications[0] (a) is not named by any selector or the default, and it has no instance and there is no pool: no connection ever reaches it',
      'applications[1] (b) has no instance and there is no pool: connections selected for it are refused',
    ]);
  });
});

describe('tun.verifyTcpChecksum, the deprecated name of tun.verifyChecksums', () => {
  const withTun = (tun: Record<string, unknown>) => {
    const o = JSON.parse(readFileSync(EXAMPLE, 'utf8')) as Record<string, Record<string, unknown>>;
    o.tun = { ...o.tun, ...tun };
    delete o.tun.verifyChecksums;
    return { ...o, tun: { ...o.tun, ...tun } };
  };

  it('alone, sets verifyChecksums and is reported as deprecated', () => {
    const c = parseConfig(withTun({ verifyTcpChecksum: false }), 'c.json');
    expect(c.tun.verifyChecksums).toBe(false);
    expect(c.deprecated).toEqual([
      'tun.verifyTcpChecksum is deprecated: it is now tun.verifyChecksums (which also covers UDP and ICMP)',
    ]);
    expect(configWarnings(c)).toContain(c.deprecated[0]);
  });

  it('beside verifyChecksums: the same value is taken, a different one is an error', () => {
    expect(
      parseConfig(withTun({ verifyTcpChecksum: false, verifyChecksums: false }), 'c.json').tun
        .verifyChecksums,
    ).toBe(false);
    expect(() =>
      parseConfig(withTun({ verifyTcpChecksum: false, verifyChecksums: true }), 'c.json'),
    ).toThrow(
      'c.json: tun.verifyTcpChecksum: false contradicts tun.verifyChecksums true; verifyTcpChecksum is the deprecated name of verifyChecksums: keep only that',
    );
  });
});

describe('round trip', () => {
  it('configToJson gives a file that parses back to an equal Config (every field set)', () => {
    const o = {
      tun: {
        name: 'mux.1',
        address: '198.18.0.1',
        localClientAddress: '198.18.0.2',
        mtu: 9000,
        txQueueLen: 20000,
        batchSize: 128,
        queues: 'auto',
        routeTable: 7,
        rulePriority: 50,
        offloads: 'off',
        verifyChecksums: false,
      },
      services: [
        { name: 'web', address: '198.19.0.9', port: 9000, protocol: 'tcp' },
        { name: 'ssh', address: '198.19.0.10', port: 22, protocol: 'tcp' },
        { name: 'far', address: '198.19.0.11', port: 9000, protocol: 'tcp', peer: 'b-host' },
      ],
      cooperative: {
        name: 'a-host',
        listen: '198.18.0.1:7070',
        portRange: '41000-41099',
        timeoutMs: 500,
        peers: [
          { name: 'b-host', address: '198.18.0.2', port: 7071, key: 'ab'.repeat(32) },
          { name: 'c-host', port: 7070, key: 'cd'.repeat(40) },
        ],
      },
      applications: [
        {
          aid: 'a',
          executables: ['/usr/bin/python3'],
          instances: [
            { address: '198.18.0.5', port: 19001 },
            { port: 19003, service: 'ssh' },
          ],
        },
        { aid: 'b', executables: [], instances: [] },
      ],
      pool: { range: '30000-30099', quarantineMs: 100, waitTimeoutMs: 200 },
      selectors: [
        { service: 'ssh', clientPorts: '7', aid: 'b' },
        { clients: ['0.0.0.0/0'], clientPorts: '1-1023', aid: 'a' },
      ],
      default: { aid: 'b' },
      limits: {
        maxFlows: 1000,
        embryonicFlows: 100,
        heldFragments: 10,
        heldFragmentBytes: 20000,
        icmpPerSecond: 7,
      },
      health: { downMs: 250, synCopies: 16 },
      timeouts: {
        embryonicMs: 500,
        establishedIdleMs: 5000,
        closingMs: 700,
        timeWaitMs: 0,
        udpUnrepliedMs: 1000,
        udpAssuredMs: 2000,
        fragmentMs: 300,
      },
      control: { socket: '/tmp/x.sock' },
      metrics: { listen: '127.0.0.9:9464' },
      log: { level: 'debug' },
    };
    const c1 = parseConfig(o, 'a.json');
    const j = configToJson(c1);
    const c2 = parseConfig(JSON.parse(JSON.stringify(j)), 'a.json');
    expect(c2).toEqual(c1);
    expect(c1.metrics.listen).toEqual({ address: ip('127.0.0.9'), port: 9464 });
    expect(c1.selectors[1]!.clients).toEqual([{ base: 0, mask: 0, prefix: 0 }]);
    // Every field written out: the input with its defaults filled in.
    expect(j).toEqual({
      ...o,
      applications: [
        {
          aid: 'a',
          executables: ['/usr/bin/python3'],
          instances: [
            { address: '198.18.0.5', port: 19001 },
            { address: '198.18.0.1', port: 19003, service: 'ssh' },
          ],
        },
        { aid: 'b', executables: [], instances: [] },
      ],
    });
  });
});

describe('errors name the file, the field path and the bad value', () => {
  it('invalid JSON: ERR_CONFIG_PARSE with line and column', () => {
    try {
      parseConfigText('{\n  "services": [\n    { "name": "web" "port": 1 }\n  ]\n}', 'config.json');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      const ce = e as ConfigError;
      expect(ce.code).toBe('ERR_CONFIG_PARSE');
      expect(ce.exitCode).toBe(2);
      expect(ce.message).toBe(
        `config.json:3:21: invalid JSON: unexpected character '"', expected ',' or '}' after the property value`,
      );
      expect(ce.problems[0]).toMatchObject({ line: 3, column: 21 });
    }
  });

  it('unreadable file: ERR_CONFIG_READ naming the file', () => {
    const missing = join(tmp, 'missing.json');
    expect(() => loadConfig(missing)).toThrow(ConfigError);
    try {
      loadConfig(missing);
    } catch (e) {
      expect((e as ConfigError).code).toBe('ERR_CONFIG_READ');
      expect((e as ConfigError).message).toMatch(
        new RegExp(`^${missing}: cannot read the config file: ENOENT`),
      );
    }
    try {
      loadConfig(tmp);
    } catch (e) {
      expect((e as ConfigError).message).toBe(
        `${tmp}: cannot read the config file: it is a directory`,
      );
    }
  });

  it('duplicate keys are reported (JSON would silently keep the last)', () => {
    const f = join(tmp, 'dup.json');
    writeFileSync(
      f,
      readFileSync(EXAMPLE, 'utf8').replace('"port": 9000,', '"port": 9000, "port": 9001,'),
    );
    expect(() => loadConfig(f)).toThrow(
      /dup\.json: services\[0\]\.port: duplicate key at line \d+, column \d+/,
    );
  });

  it('wrong type', () => {
    expect(errorsOf((c) => (c.tun.mtu = '1500'))).toEqual([
      'config.json: tun.mtu: "1500" is a string, expected an integer',
    ]);
    expect(errorsOf((c) => (c.services = {}))).toEqual([
      'config.json: services: {} is an object, expected an array',
    ]);
    expect(errorsOf((c) => (c.services[0].port = 9000.5))).toEqual([
      'config.json: services[0].port: 9000.5 is not an integer',
    ]);
    expect(failure([]).message).toBe('config.json: (root): [] is an array, expected an object');
  });

  it('unknown field, with a hint when it looks misspelt', () => {
    expect(errorsOf((c) => (c.services[0].prot = 1))).toEqual([
      'config.json: services[0].prot: unknown field; did you mean "port"?',
    ]);
    expect(errorsOf((c) => (c.color = 'blue'))).toEqual([
      'config.json: color: unknown field (allowed here: $schema, tun, services, applications, selectors, default, pool, cooperative, limits, health, timeouts, control, metrics, log)',
    ]);
  });

  it('missing required field', () => {
    expect(errorsOf((c) => delete c.services[0].address)).toEqual([
      'config.json: services[0].address: required field is missing',
    ]);
    expect(errorsOf((c) => delete c.applications)).toEqual([
      'config.json: applications: required field is missing',
    ]);
  });

  it('out of range', () => {
    expect(errorsOf((c) => (c.services[0].port = 70000))).toEqual([
      'config.json: services[0].port: 70000 is above the maximum 65535',
    ]);
    expect(errorsOf((c) => (c.applications[0].instances[0].port = 0))).toEqual([
      'config.json: applications[0].instances[0].port: 0 is below the minimum 1',
    ]);
    expect(errorsOf((c) => (c.tun.rulePriority = 32766))).toEqual([
      'config.json: tun.rulePriority: 32766 is above the maximum 32765',
    ]);
  });

  it('bad enum value', () => {
    expect(errorsOf((c) => (c.log.level = 'verbose'))).toEqual([
      'config.json: log.level: "verbose" is not one of "fatal", "error", "warn", "info", "debug", "trace", "silent"',
    ]);
  });

  it('udp: a TCP and a UDP service share address and port; two UDP ones do not', () => {
    const both = parseConfig(
      {
        ...minimal(),
        services: [
          { name: 'dns-tcp', address: '198.19.0.9', port: 53 },
          { name: 'dns', address: '198.19.0.9', port: 53, protocol: 'udp' },
        ],
      },
      'config.json',
    );
    expect(both.services.map((s) => s.protocol)).toEqual(['tcp', 'udp']);
    expect(
      errorsOf((c) => {
        c.services[0].protocol = 'udp';
        c.services.push({ ...c.services[0], name: 'again' });
      }),
    ).toEqual([
      `config.json: services[1].port: 198.19.0.9 udp/9000 is already services[0] ("web")`,
    ]);
  });

  it('bad names and addresses', () => {
    expect(errorsOf((c) => (c.applications[0].aid = '-a'))).toEqual([
      `config.json: applications[0].aid: "-a" is not valid here: expected name of 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    ]);
    expect(errorsOf((c) => (c.services[0].address = '198.19.0'))).toEqual([
      'config.json: services[0].address: "198.19.0" is not valid here: expected IPv4 address in dotted-quad form or IPv6 address, or an array of one of each, e.g. "198.19.0.9", "2001:2::9" or ["198.19.0.9", "2001:2::9"]',
    ]);
    expect(errorsOf((c) => (c.services[0].address = '198.19.0.256'))).toEqual([
      'config.json: services[0].address: "198.19.0.256" is not a valid IPv4 address (four numbers 0-255, no leading zeros)',
    ]);
    expect(errorsOf((c) => (c.services[0].address = '224.0.0.1'))).toEqual([
      'config.json: services[0].address: "224.0.0.1" is a multicast address (224.0.0.0/4) and cannot be a service address',
    ]);
    expect(errorsOf((c) => (c.applications[0].instances[0].address = '127.0.0.1'))).toEqual([
      'config.json: applications[0].instances[0].address: "127.0.0.1" is a loopback address (127.0.0.0/8) and cannot be an instance address',
    ]);
    expect(errorsOf((c) => (c.tun.name = 'a-much-too-long-name'))).toHaveLength(1);
    expect(errorsOf((c) => (c.tun.name = '..'))).toHaveLength(1);
  });

  it('bad CIDR', () => {
    expect(errorsOf((c) => (c.selectors[0].clients = ['198.18.1.0/33']))).toEqual([
      'config.json: selectors[0].clients[0]: "198.18.1.0/33" is not a valid CIDR: the prefix length must be 0-32',
    ]);
    expect(errorsOf((c) => (c.selectors[0].clients = ['198.18.1.300/24']))).toEqual([
      'config.json: selectors[0].clients[0]: "198.18.1.300/24" is not a valid CIDR: 198.18.1.300 is not an IPv4 address',
    ]);
    expect(errorsOf((c) => (c.selectors[0].clients = ['198.18.1.0']))).toEqual([
      'config.json: selectors[0].clients[0]: "198.18.1.0" is not valid here: expected IPv4 or IPv6 CIDR "ADDRESS/PREFIX", e.g. "198.18.1.0/24" or "2001:2:1::/48"',
    ]);
    expect(errorsOf((c) => (c.selectors[0].clients = []))).toEqual([
      'config.json: selectors[0].clients: [] has 0 items, expected at least 1',
    ]);
    expect(errorsOf((c) => (c.selectors[1].clients = ['198.18.2.0/24', '198.18.2.0/24']))).toEqual([
      'config.json: selectors[1].clients[1]: "198.18.2.0/24" repeats selectors[1].clients[0]',
    ]);
  });

  it('host bits set beyond the prefix', () => {
    expect(errorsOf((c) => (c.selectors[1].clients[0] = '198.18.2.5/24'))).toEqual([
      'config.json: selectors[1].clients[0]: "198.18.2.5/24" has host bits set beyond the /24 prefix (the network is 198.18.2.0/24)',
    ]);
    expect(errorsOf((c) => (c.selectors[1].clients[0] = '10.0.0.1/0'))).toEqual([
      'config.json: selectors[1].clients[0]: "10.0.0.1/0" has host bits set beyond the /0 prefix (the network is 0.0.0.0/0)',
    ]);
  });

  it('bad client port range', () => {
    expect(errorsOf((c) => (c.selectors[0].clientPorts = '2000-1000'))).toEqual([
      'config.json: selectors[0].clientPorts: "2000-1000": the low end 2000 is above the high end 1000',
    ]);
    expect(errorsOf((c) => (c.selectors[0].clientPorts = '1024-99999'))).toEqual([
      'config.json: selectors[0].clientPorts: "1024-99999": port 99999 is above the maximum 65535',
    ]);
    expect(errorsOf((c) => (c.selectors[0].clientPorts = '1024:2048'))).toEqual([
      `config.json: selectors[0].clientPorts: "1024:2048" is not valid here: expected port range "lo-hi" or single port "p", e.g. "1024-65535"`,
    ]);
  });

  it('unknown AID or service in a selector, unknown default AID', () => {
    expect(errorsOf((c) => (c.selectors[1].aid = 'tenant-c'))).toEqual([
      'config.json: selectors[1].aid: "tenant-c" is not an application (known: "tenant-a", "tenant-b")',
    ]);
    expect(errorsOf((c) => (c.selectors[0].service = 'mail'))).toEqual([
      'config.json: selectors[0].service: "mail" is not a service (known: "web")',
    ]);
    expect(errorsOf((c) => (c.default = { aid: 'nobody' }))).toEqual([
      'config.json: default.aid: "nobody" is not an application (known: "tenant-a", "tenant-b")',
    ]);
  });

  it('default: exactly one of the two forms', () => {
    expect(errorsOf((c) => (c.default = { refuse: false }))).toEqual([
      'config.json: default.refuse: false is not allowed here: the only allowed value is true',
    ]);
    expect(errorsOf((c) => (c.default = { aid: 'tenant-a', refuse: true }))).toEqual([
      'config.json: default: {"aid": "tenant-a", "refuse": true} matches none of the allowed forms: {"aid": AID}, {"refuse": true}',
    ]);
    expect(parseConfig({ ...example(), default: { refuse: true } }, 'x').default).toEqual({
      refuse: true,
    });
  });

  it('duplicate AID, service name and service endpoint', () => {
    expect(
      errorsOf((c) => c.applications.push({ aid: 'tenant-a', instances: [{ port: 19005 }] })),
    ).toEqual(['config.json: applications[2].aid: "tenant-a" is already applications[0]']);
    expect(
      errorsOf((c) => c.services.push({ name: 'web', address: '198.19.0.10', port: 9000 })),
    ).toEqual(['config.json: services[1].name: "web" is already the name of services[0]']);
    expect(
      errorsOf((c) => c.services.push({ name: 'web2', address: '198.19.0.9', port: 9000 })),
    ).toEqual([
      'config.json: services[1].port: 198.19.0.9 tcp/9000 is already services[0] ("web")',
    ]);
  });

  it('duplicate instance port, also across applications and addresses', () => {
    expect(errorsOf((c) => (c.applications[1].instances[0].port = 19001))).toEqual([
      'config.json: applications[1].instances[0].port: 19001 is already used by applications[0].instances[0] ("tenant-a"); instance ports must be unique (replies are steered back by source port alone)',
    ]);
  });

  it('cooperative: unknown peer, peer without address, service port in the p2 range', () => {
    const coop = { peers: [{ name: 'b-host', key: 'ab'.repeat(32) }] };
    expect(
      errorsOf((c) => {
        c.cooperative = coop;
        c.services[0].peer = 'nobody';
      }),
    ).toEqual(['config.json: services[0].peer: "nobody" is not a peer (known: "b-host")']);
    expect(
      errorsOf((c) => {
        c.cooperative = coop;
        c.services[0].peer = 'b-host';
      }),
    ).toEqual([
      'config.json: services[0].peer: peer "b-host" has no address, so this daemon cannot negotiate with it',
    ]);
    expect(
      errorsOf((c) => {
        c.cooperative = { ...coop, portRange: '8000-9999' };
      }),
    ).toEqual([
      'config.json: services[0].port: 9000 lies in cooperative.portRange 8000-9999; a service port must be outside it',
    ]);
    expect(errorsOf((c) => (c.cooperative = { peers: [{ name: 'x', key: 'abc' }] }))[0]).toMatch(
      /cooperative\.peers\[0\]\.key/,
    );
  });

  it('collisions between services, instances and the TUN addresses', () => {
    expect(errorsOf((c) => (c.applications[0].instances[0].port = 9000))).toEqual([
      'config.json: applications[0].instances[0].port: 9000 is the port of service "web"; an instance port must differ from every service port (replies from instance ports are steered into the TUN)',
    ]);
    expect(errorsOf((c) => (c.services[0].address = '198.19.255.1'))).toEqual([
      'config.json: services[0].address: "198.19.255.1" is tun.address; a service address must be a different address routed to the TUN',
      // tenant-b's instance names 198.19.255.1 explicitly: now a VIP, so it is wrong too.
      'config.json: applications[1].instances[0].address: "198.19.255.1" is the address of service "web", which is routed to the TUN; an instance must listen on a local address',
    ]);
    expect(errorsOf((c) => (c.services[0].address = '198.19.255.2'))).toEqual([
      'config.json: services[0].address: "198.19.255.2" is tun.localClientAddress; a service address must be a different address',
    ]);
    expect(errorsOf((c) => (c.applications[0].instances[0].address = '198.19.0.9'))).toEqual([
      'config.json: applications[0].instances[0].address: "198.19.0.9" is the address of service "web", which is routed to the TUN; an instance must listen on a local address',
    ]);
    expect(errorsOf((c) => (c.tun.localClientAddress = '198.19.255.1'))).toContain(
      'config.json: tun.localClientAddress: "198.19.255.1" is also tun.address; the local client address must be a different, unassigned address',
    );
  });

  it('routing table, control socket and metrics address', () => {
    expect(errorsOf((c) => (c.tun.routeTable = 254))).toEqual([
      "config.json: tun.routeTable: 254 is the kernel's main table; choose another table (e.g. 100)",
    ]);
    expect(errorsOf((c) => (c.control.socket = 'vpm.sock'))).toEqual([
      'config.json: control.socket: "vpm.sock" is not valid here: expected absolute path of at most 107 bytes',
    ]);
    expect(errorsOf((c) => (c.control.socket = `/${'é'.repeat(60)}`))).toEqual([
      `config.json: control.socket: "/${'é'.repeat(55)}... is 121 bytes long; a unix socket path has at most 107`,
    ]);
    expect(errorsOf((c) => (c.metrics.listen = '0.0.0.0:9464'))).toEqual([
      'config.json: metrics.listen: "0.0.0.0:9464" is not a loopback address; metrics are served on 127.0.0.0/8 or [::1] only',
    ]);
    expect(errorsOf((c) => (c.metrics.listen = '127.0.0.1:65536'))).toEqual([
      'config.json: metrics.listen: "127.0.0.1:65536": port 65536 is out of range 1-65535',
    ]);
  });

  it('reports every problem at once, with path and value in `problems`', () => {
    const e = failure({
      tun: { mtu: 10, colour: 1 },
      services: [{ name: 'web', address: '198.19.0.9', port: 70000, protocol: 'sctp' }],
      applications: [{ aid: 'a', instances: [{ port: 'x' }] }],
      log: { level: 3 },
    });
    expect(e.problems).toEqual([
      { path: 'tun.mtu', value: 10, message: '10 is below the minimum 576' },
      {
        path: 'tun.colour',
        value: 1,
        message:
          'unknown field (allowed here: name, address, localClientAddress, address6, localClientAddress6, mtu, txQueueLen, batchSize, queues, routeTable, rulePriority, offloads, verifyChecksums, verifyTcpChecksum)',
      },
      { path: 'services[0].port', value: 70000, message: '70000 is above the maximum 65535' },
      { path: 'services[0].protocol', value: 'sctp', message: '"sctp" is not one of "tcp", "udp"' },
      {
        path: 'applications[0].instances[0].port',
        value: 'x',
        message: '"x" is a string, expected an integer',
      },
      { path: 'log.level', value: 3, message: '3 is an integer, expected a string' },
    ]);
    expect(e.message.split('\n')).toHaveLength(6);

    const semantic = errorsOf((c) => {
      c.selectors[0].aid = 'x';
      c.selectors[1].clients[0] = '198.18.2.1/24';
      c.applications[1].aid = 'tenant-a';
    });
    expect(semantic).toEqual([
      'config.json: applications[1].aid: "tenant-a" is already applications[0]',
      'config.json: selectors[0].aid: "x" is not an application (known: "tenant-a")',
      'config.json: selectors[1].clients[0]: "198.18.2.1/24" has host bits set beyond the /24 prefix (the network is 198.18.2.0/24)',
      // tenant-b was renamed away, so the selector naming it is wrong now as well.
      'config.json: selectors[1].aid: "tenant-b" is not an application (known: "tenant-a")',
    ]);
  });

  it('limits.embryonicFlows: a quarter of maxFlows by default, at most maxFlows', () => {
    const load = (limits: Record<string, unknown>) =>
      parseConfig({ ...minimal(), limits }, 'c.json');
    expect(errorsOf((c) => (c.limits = { maxFlows: 64, embryonicFlows: 65 }))).toEqual([
      'config.json: limits.embryonicFlows: 65 is more than limits.maxFlows (64): embryonic flows are a share of the table',
    ]);
    expect(load({ maxFlows: 64 }).limits.embryonicFlows).toBe(16);
    expect(load({ maxFlows: 3 }).limits.embryonicFlows).toBe(1);
    expect(load({ maxFlows: 64, embryonicFlows: 64 }).limits.embryonicFlows).toBe(64);
  });

  it('lists at most 50 problems in the message, all of them in `problems`', () => {
    const o = example();
    o.services = Array.from({ length: 60 }, (_, i) => ({
      name: `s${i}`,
      address: '1.2.3.4',
      port: 0,
    }));
    const e = failure(o);
    expect(e.problems).toHaveLength(60);
    const lines = e.message.split('\n');
    expect(lines).toHaveLength(51);
    expect(lines[50]).toBe('config.json: ... and 10 more problems');
  });
});

describe('warnings', () => {
  it('name a selector that an earlier one shadows', () => {
    const o = example();
    o.selectors.push({
      service: 'web',
      clients: ['198.18.2.128/25'],
      clientPorts: '2000-3000',
      aid: 'tenant-a',
    });
    o.selectors.push({ aid: 'tenant-b' }, { clients: ['10.0.0.0/8'], aid: 'tenant-a' });
    expect(configWarnings(parseConfig(o, 'x.json'))).toEqual([
      'selectors[2] can never match: selectors[1] (any service, clients 198.18.2.0/24 198.18.3.7/32 -> tenant-b) matches everything it does',
      'selectors[4] can never match: selectors[3] (any service, any client -> tenant-b) matches everything it does',
    ]);
  });
});

describe('robustness', () => {
  /** Replace the value at a random path of `o` with `v`. */
  function mutate(o: Json, choices: number[], v: unknown): unknown {
    let cur = o;
    for (const choice of choices) {
      if (typeof cur !== 'object' || cur === null) break;
      const keys = Object.keys(cur);
      if (keys.length === 0) break;
      const k = keys[choice % keys.length]!;
      if (typeof cur[k] !== 'object' || cur[k] === null || choice % 3 === 0) {
        cur[k] = v;
        return o;
      }
      cur = cur[k];
    }
    return o;
  }

  const onlyConfigErrors = (run: () => unknown) => {
    try {
      const c = run() as Config;
      expect(Object.isFrozen(c)).toBe(true);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      expect(e.exitCode).toBe(2);
      expect(e.problems.length).toBeGreaterThan(0);
      for (const p of e.problems) expect(typeof p.message).toBe('string');
    }
  };

  it('random JSON values never make it throw anything but ConfigError (fast-check)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => onlyConfigErrors(() => parseConfig(v, 'r.json'))),
      { numRuns: 3000 },
    );
  });

  it('nor do random edits of the valid example (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.nat(), { minLength: 1, maxLength: 6 }),
        fc.oneof(
          fc.jsonValue(),
          fc.constantFrom(
            '198.19.255.1',
            '198.18.1.5/24',
            '1-2',
            'web',
            'tenant-a',
            0,
            65535,
            19001,
          ),
        ),
        (path, v) => onlyConfigErrors(() => parseConfig(mutate(example(), path, v), 'r.json')),
      ),
      { numRuns: 3000 },
    );
  });

  it('nor do random texts', () => {
    fc.assert(
      fc.property(fc.string(), (s) => onlyConfigErrors(() => parseConfigText(s, 'r.json'))),
      { numRuns: 1000 },
    );
  });
});

describe('the published schema', () => {
  const schema = JSON.parse(readFileSync(configSchemaPath(), 'utf8')) as SchemaNode;

  interface Field {
    node: SchemaNode;
    required: boolean;
  }

  /** Every field of the schema as `a.b` or `a[].b` (oneOf branches merged). */
  function fields(): Map<string, Field> {
    const out = new Map<string, Field>();
    const walk = (s: SchemaNode, path: string, required: boolean) => {
      if (path !== '') out.set(path, { node: s, required });
      const prefix = path === '' ? '' : `${path}.`;
      for (const [k, v] of Object.entries(s.properties ?? {}))
        walk(v, `${prefix}${k}`, (s.required ?? []).includes(k));
      for (const branch of s.oneOf ?? [])
        for (const [k, v] of Object.entries(branch.properties ?? {}))
          walk(v, `${prefix}${k}`, false);
      for (const [k, v] of Object.entries(s.items?.properties ?? {}))
        walk(v, `${path}[].${k}`, (s.items?.required ?? []).includes(k));
    };
    walk(schema, '', false);
    return out;
  }

  it('is documented field by field, with the same defaults, in docs/configuration.md', () => {
    const doc = readFileSync(join(packageRoot(), 'docs', 'configuration.md'), 'utf8');
    const rows = new Map<string, string>();
    for (const m of doc.matchAll(/^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|/gm))
      rows.set(m[1]!, m[2]!.trim());
    const missing: string[] = [];
    for (const [path, f] of fields()) {
      const row = rows.get(path);
      if (row === undefined) {
        missing.push(path);
        continue;
      }
      if (f.required) expect(row, path).toBe('required');
      else if ('default' in f.node) expect(row, path).toBe(`\`${JSON.stringify(f.node.default)}\``);
      else expect(row, path).not.toBe('required');
    }
    expect(missing).toEqual([]);
    expect(fields().size).toBeGreaterThan(30);
  });

  it('describes every field', () => {
    for (const [path, f] of fields()) expect(typeof f.node.description, path).toBe('string');
  });
});
