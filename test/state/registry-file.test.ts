/**
 * The registry's state file (src/state/registry-file.ts): an atomic save, and a
 * load that never throws and never trusts a damaged or foreign file.
 */

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { loadRegistryState, saveRegistryState } from '../../src/state/registry-file.js';
import { PortPool } from '../../src/virtual/pool.js';
import { Registry, type RegistrySnapshot } from '../../src/virtual/registry.js';

const SNAP: RegistrySnapshot = {
  nextId: 4,
  groups: [
    {
      aid: 'tenant-a',
      proto: 'tcp',
      vport: 9000,
      key: 'tun',
      addr4: '198.19.255.1',
      addr6: '2001:2:0:ff::1',
      port: 20000,
      instance: 0,
      registrations: [
        {
          id: 1,
          pid: 4242,
          hostPid: 4242,
          start: '123456',
          fd: 3,
          v4: true,
          v6: true,
          since: 1_700_000_000_000,
        },
        { id: 3, pid: 7, hostPid: 90007, start: null, fd: 5, v4: true, v6: false, since: 1.5 },
      ],
    },
    {
      aid: 'b',
      proto: 'udp',
      vport: 5353,
      key: '2001:2:0:ff::7',
      addr4: null,
      addr6: '2001:2:0:ff::7',
      port: 20001,
      instance: -1,
      registrations: [],
    },
  ],
  udpReports: [
    {
      addr: '0.0.0.0',
      port: 40000,
      aid: 'b',
      pid: 0,
      hostPid: 0,
      start: null,
      fd: -1,
      remote: '198.19.0.9:5353',
      at: 12,
    },
  ],
  pool: {
    lo: 20000,
    hi: 20009,
    inUse: [20000, 20001],
    quarantine: [{ port: 20005, released: 123.25 }],
  },
};

let dir = '';
let path = '';

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vpm-state-'));
  path = join(dir, 'sub', 'registry.json');
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A file with the right envelope around `body` (a valid checksum): only the shape is wrong. */
function withBody(body: unknown): void {
  mkdirSync(dirname(path), { recursive: true });
  const text = JSON.stringify(body);
  writeFileSync(
    path,
    JSON.stringify({
      magic: 'vpm-registry',
      version: 1,
      sha256: createHash('sha256').update(text).digest('hex'),
      body: text,
    }),
  );
}

const clone = (): RegistrySnapshot => JSON.parse(JSON.stringify(SNAP));

describe('registry state file', () => {
  it('saves atomically with mode 0600 and loads the same snapshot back', () => {
    saveRegistryState(path, SNAP);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readdirSync(join(dir, 'sub'))).toEqual(['registry.json']); // no temporary file left
    const env = JSON.parse(readFileSync(path, 'utf8'));
    expect(env).toMatchObject({ magic: 'vpm-registry', version: 1 });
    expect(env.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(loadRegistryState(path)).toEqual({ snapshot: SNAP, problem: null });
    // A second save replaces it, also over a temporary file a crash left with another mode.
    writeFileSync(`${path}.tmp`, 'half a file', { mode: 0o644 });
    const next = { ...clone(), nextId: 9 };
    saveRegistryState(path, next);
    expect(loadRegistryState(path).snapshot).toEqual(next);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readdirSync(join(dir, 'sub'))).toEqual(['registry.json']);
  });

  it('a missing file is no state and no problem', () => {
    expect(loadRegistryState(path)).toEqual({ snapshot: null, problem: null });
  });

  it('gives a problem, never a throw, for a damaged or foreign file', () => {
    saveRegistryState(path, SNAP);
    const good = readFileSync(path);
    const cases: [string, Buffer | string, RegExp][] = [
      ['empty', '', /empty file/],
      ['truncated', good.subarray(0, Math.floor(good.length / 2)), /not JSON \(truncated/],
      ['cut before the newline', good.subarray(0, good.length - 3), /not JSON/],
      ['not JSON', 'hello\n', /not JSON/],
      ['JSON but not an object', '[1,2]', /not a JSON object/],
      [
        'other magic',
        good.toString().replace('vpm-registry', 'vpm-flowtable'),
        /magic "vpm-flowtable"/,
      ],
      ['no magic', JSON.stringify({ version: 1 }), /not a vpm registry state/],
      [
        'other version',
        good.toString().replace('"version":1', '"version":2'),
        /version 2; this vpm reads version 1/,
      ],
      [
        'bad checksum text',
        good.toString().replace(/"sha256":"[0-9a-f]{4}/, '"sha256":"zzzz'),
        /sha256 is not 64 hex/,
      ],
    ];
    // A flipped byte inside the body: the checksum no longer matches.
    const flipped = Buffer.from(good);
    const at = flipped.indexOf('tenant-a');
    flipped[at] = flipped[at]! ^ 0x01; // 't' -> 'u'
    cases.push(['flipped byte in the body', flipped, /checksum mismatch/]);
    // A flipped byte in the checksum itself.
    const flipped2 = Buffer.from(good);
    const h = flipped2.indexOf('"sha256":"') + 10;
    flipped2[h] = flipped2[h] === 0x30 ? 0x31 : 0x30;
    cases.push(['flipped byte in the checksum', flipped2, /checksum mismatch/]);
    // A flip that breaks the JSON.
    const flipped3 = Buffer.from(good);
    flipped3[0] = 0x5b; // '{' -> '['
    cases.push(['flipped first byte', flipped3, /not JSON|not a JSON object/]);
    for (const [name, content, want] of cases) {
      writeFileSync(path, content);
      let r: ReturnType<typeof loadRegistryState> | undefined;
      expect(() => {
        r = loadRegistryState(path);
      }, name).not.toThrow();
      expect(r!.snapshot, name).toBeNull();
      expect(r!.problem, name).toMatch(want);
      expect(r!.problem, name).toContain(path);
    }
  });

  it('checks the shape field by field, naming the first bad field', () => {
    const cases: [string, (s: RegistrySnapshot & Record<string, unknown>) => void, RegExp][] = [
      [
        'port 0',
        (s) => (s.groups[0]!.port = 0),
        /body\.groups\[0\]\.port: 0 is not an integer 1-65535/,
      ],
      ['port 65536', (s) => (s.pool!.inUse[1] = 65536), /body\.pool\.inUse\[1\]: 65536/],
      ['fractional vport', (s) => (s.groups[1]!.vport = 53.5), /groups\[1\]\.vport/],
      [
        'AID not a string',
        (s) => ((s.groups[0] as unknown as Record<string, unknown>).aid = 7),
        /groups\[0\]\.aid: 7 is not an AID name/,
      ],
      ['AID not a name', (s) => (s.udpReports[0]!.aid = '../x'), /udpReports\[0\]\.aid/],
      [
        'proto',
        (s) => ((s.groups[0] as unknown as Record<string, unknown>).proto = 'sctp'),
        /groups\[0\]\.proto/,
      ],
      [
        'key',
        (s) => (s.groups[1]!.key = 'example.com'),
        /groups\[1\]\.key: "example.com" is not an IP address/,
      ],
      ['addr6 that is IPv4', (s) => (s.groups[0]!.addr6 = '198.19.0.1'), /groups\[0\]\.addr6/],
      [
        'pid 0 in a registration',
        (s) => (s.groups[0]!.registrations[0]!.pid = 0),
        /registrations\[0\]\.pid/,
      ],
      ['negative fd', (s) => (s.groups[0]!.registrations[1]!.fd = -1), /registrations\[1\]\.fd/],
      [
        'start not digits',
        (s) => (s.groups[0]!.registrations[0]!.start = '12 34'),
        /registrations\[0\]\.start/,
      ],
      [
        'v4 not boolean',
        (s) => ((s.groups[0]!.registrations[0] as unknown as Record<string, unknown>).v4 = 1),
        /registrations\[0\]\.v4/,
      ],
      [
        'since not finite',
        (s) => ((s.groups[0]!.registrations[0] as unknown as Record<string, unknown>).since = 'x'),
        /since/,
      ],
      ['instance below -1', (s) => (s.groups[0]!.instance = -2), /instance/],
      ['unknown field', (s) => (s.extra = 1), /body: unknown field "extra"/],
      [
        'missing field',
        (s) => delete (s as Partial<RegistrySnapshot>).udpReports,
        /body: no field "udpReports"/,
      ],
      [
        'groups not an array',
        (s) => ((s as Record<string, unknown>).groups = {}),
        /body\.groups: not an array/,
      ],
      ['pool lo above hi', (s) => (s.pool!.lo = 20010), /lo 20010 is above hi 20009/],
      [
        'quarantine time',
        (s) => ((s.pool!.quarantine[0] as unknown as Record<string, unknown>).released = null),
        /quarantine\[0\]\.released/,
      ],
      ['udp address', (s) => (s.udpReports[0]!.addr = '1.2.3'), /udpReports\[0\]\.addr/],
      ['nextId 0', (s) => (s.nextId = 0), /nextId/],
      [
        'body null',
        (s) => {
          for (const k of Object.keys(s)) delete (s as Record<string, unknown>)[k];
        },
        /body: no field/,
      ],
    ];
    for (const [name, damage, want] of cases) {
      const s = clone() as RegistrySnapshot & Record<string, unknown>;
      damage(s);
      withBody(s);
      const r = loadRegistryState(path);
      expect(r.snapshot, name).toBeNull();
      expect(r.problem, name).toMatch(want);
    }
    withBody(null);
    expect(loadRegistryState(path).problem).toMatch(/body: not an object/);
    // The untouched snapshot in the same hand-made envelope loads.
    withBody(SNAP);
    expect(loadRegistryState(path)).toEqual({ snapshot: SNAP, problem: null });
  });

  it('gives a problem for a path it cannot read as a file', () => {
    const r = loadRegistryState(dir);
    expect(r.snapshot).toBeNull();
    expect(r.problem).toMatch(/cannot read .*EISDIR/);
  });
});

describe('registry state file with a registry', () => {
  it('holds what onChange saw: a bind saved before it resolves is restored by the next registry', async () => {
    const child = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      const cfg = parseConfig(
        {
          services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
          applications: [{ aid: 'a' }],
          selectors: [],
          default: { aid: 'a' },
          pool: { range: '20000-20003', quarantineMs: 60_000, waitTimeoutMs: 50 },
        },
        'test.json',
      );
      const build = () => {
        const instances = new InstanceSet();
        instances.replaceStatic(rulesFromConfig(cfg), staticInstancesFromConfig(cfg));
        const pool = new PortPool(20000, 20003, 60_000, 50);
        return { instances, pool, reg: new Registry(cfg, instances, pool) };
      };
      const old = build();
      old.reg.onChange(() => saveRegistryState(path, old.reg.snapshot()));
      const { port } = await old.reg.bind(new Socket(), {
        aid: 'a',
        proto: 'tcp',
        vport: 9000,
        pid: child.pid!,
        fd: 3,
      });
      old.pool.close();
      // The daemon is gone; the next one reads the file.
      const loaded = loadRegistryState(path);
      expect(loaded.problem).toBeNull();
      const next = build();
      const r = next.reg.restore(loaded.snapshot!);
      expect(r.groups).toMatchObject([{ aid: 'a', port, registrations: 1 }]);
      expect(next.pool.isInUse(port)).toBe(true);
      next.pool.close();
    } finally {
      child.kill('SIGKILL');
    }
  });
});
