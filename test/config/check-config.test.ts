/**
 * `vpm check-config`, run as the real CLI: the build in dist/ that
 * scripts/setup.sh made (`npm test` runs it first). A missing build fails this
 * file at once, naming what to run.
 */

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/base/paths.js';

const root = packageRoot();
const CLI = join(root, 'dist', 'src', 'cli', 'main.js');
const EXAMPLE = 'docs/examples/two-tenants.json';
let work = '';

beforeAll(() => {
  if (!existsSync(CLI))
    throw new Error(`${CLI} is missing: build first (bash scripts/setup.sh, or npm run build)`);
  work = mkdtempSync(join(tmpdir(), 'vpm-check-config-'));
});

afterAll(() => {
  if (work !== '') rmSync(work, { recursive: true, force: true });
});

function vpm(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: root,
    encoding: 'utf8',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function file(name: string, text: string): string {
  const p = join(work, name);
  writeFileSync(p, text);
  return p;
}

describe('vpm check-config', () => {
  it('accepts the example: exit 0, "FILE: ok" and a summary', () => {
    const r = vpm('check-config', EXAMPLE);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(`${EXAMPLE}: ok`);
    expect(lines).toContain('  web  198.19.0.9 tcp/9000');
    expect(lines).toContain('  tenant-a  198.19.255.1:19001');
    expect(lines).toContain(
      '  1. service web, clients 198.18.1.0/24, client ports 1024-65535 -> tenant-a',
    );
    expect(lines.at(-1)).toBe('default: -> tenant-a');
  });

  it('--json prints the effective config, itself a valid config', () => {
    const r = vpm('check-config', EXAMPLE, '--json');
    expect(r.code).toBe(0);
    const effective = JSON.parse(r.stdout);
    const original = JSON.parse(readFileSync(join(root, EXAMPLE), 'utf8'));
    delete original.$schema;
    // The example spells out every default except tenant-a's instance address.
    original.applications[0].instances[0].address = '198.19.255.1';
    // ... and the defaults of the sections added since: no cooperation, no executables.
    original.cooperative = null;
    for (const a of original.applications) a.executables = [];
    // The embryonic share, null in the file, resolved: a quarter of maxFlows.
    original.limits.embryonicFlows = 16384;
    expect(effective).toEqual(original);
    const again = vpm('check-config', file('effective.json', r.stdout));
    expect(again.code).toBe(0);
  });

  it('rejects a bad file: exit 2, every problem on stderr, nothing on stdout', () => {
    const example = JSON.parse(readFileSync(join(root, EXAMPLE), 'utf8'));
    example.services[0].port = 70000;
    example.selectors[1].aid = 'tenant-c';
    const bad = file('bad.json', JSON.stringify(example, null, 2));
    const r = vpm('check-config', bad);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`${bad}: services[0].port: 70000 is above the maximum 65535\n`);

    example.services[0].port = 9000;
    const bad2 = file('bad2.json', JSON.stringify(example, null, 2));
    const r2 = vpm('check-config', bad2);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toBe(
      `${bad2}: selectors[1].aid: "tenant-c" is not an application (known: "tenant-a", "tenant-b")\n`,
    );
  });

  it('reports invalid JSON with line and column, and a missing file', () => {
    const broken = file('broken.json', '{\n  "services": [],\n}\n');
    const r = vpm('check-config', broken);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `${broken}:3:1: invalid JSON: trailing comma before } is not allowed in JSON\n`,
    );

    const missing = join(work, 'nope.json');
    const m = vpm('check-config', missing);
    expect(m.code).toBe(2);
    expect(m.stderr).toMatch(new RegExp(`^${missing}: cannot read the config file: ENOENT`));
  });

  it('--json on a bad file prints the problems as JSON', () => {
    const bad = file(
      'types.json',
      '{"services": [{"name": "web", "address": "198.19.0.9", "port": "80"}], "applications": [{"aid": "a"}]}',
    );
    const r = vpm('check-config', bad, '--json');
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toEqual({
      ok: false,
      file: bad,
      code: 'ERR_CONFIG_INVALID',
      problems: [
        { path: 'services[0].port', value: '80', message: '"80" is a string, expected an integer' },
      ],
    });
  });

  it('prints warnings on stderr but still exits 0', () => {
    const warn = file(
      'warn.json',
      JSON.stringify({
        services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
        applications: [{ aid: 'a', instances: [{ port: 19001 }] }],
        selectors: [{ aid: 'a' }, { clients: ['198.18.0.0/15'], aid: 'a' }],
      }),
    );
    const r = vpm('check-config', warn);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe(`${warn}: ok`);
    expect(r.stderr).toBe(
      `${warn}: warning: selectors[1] can never match: selectors[0] (any service, any client -> a) matches everything it does\n`,
    );
  });

  it('warns when a UDP flow would expire sooner than RFC 4787 allows', () => {
    const warn = file(
      'udp-short.json',
      JSON.stringify({
        services: [{ name: 'dns', address: '198.19.0.9', port: 53, protocol: 'udp' }],
        applications: [{ aid: 'a', instances: [{ port: 19001 }] }],
        default: { aid: 'a' },
        timeouts: { udpAssuredMs: 60000 },
      }),
    );
    const r = vpm('check-config', warn);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(
      `${warn}: warning: timeouts.udpAssuredMs 60000 is below 120000, the least RFC 4787 (REQ-5) allows a UDP mapping: a UDP flow idle longer than that loses its translation, and a client behind vpm that sends keep-alives every 2 minutes loses its server\n`,
    );
  });

  describe('warns only about what is wrong in the mode the config runs in', () => {
    const KEY = 'ab'.repeat(32);
    const web = { name: 'web', address: '198.19.0.9', port: 9000 };
    const check = (name: string, cfg: Record<string, unknown>) => {
      const path = file(name, JSON.stringify(cfg));
      const r = vpm('check-config', path);
      expect(r.code, r.stderr).toBe(0);
      return { path, warnings: r.stderr };
    };

    it('a cooperative server: its AIDs are chosen by the negotiation, not by selectors', () => {
      const r = check('coop-server.json', {
        services: [web],
        applications: [
          { aid: 'a1', instances: [{ port: 19001 }] },
          { aid: 'a2', instances: [{ port: 19002 }] },
          { aid: 'pooled' },
        ],
        pool: { range: '20000-20999' },
        default: { refuse: true },
        cooperative: {
          name: 'server',
          listen: '198.18.20.2:7070',
          peers: [{ name: 'client', keys: [{ id: 'k1', key: KEY }] }],
        },
      });
      expect(r.warnings).toBe('');
    });

    it('a cooperative client side: AIDs from selectors or vpm exec, instances at the peer', () => {
      const r = check('coop-client.json', {
        services: [{ ...web, peer: 'server' }],
        applications: [{ aid: 'a1' }, { aid: 'from-exec' }],
        selectors: [{ clientPorts: '50000-50999', aid: 'a1' }],
        default: { refuse: true },
        cooperative: {
          name: 'client',
          peers: [
            { name: 'server', address: '198.18.20.2', port: 7070, keys: [{ id: 'k1', key: KEY }] },
          ],
        },
      });
      expect(r.warnings).toBe('');
    });

    it('pool-only applications: instances come from vpm exec by design', () => {
      const r = check('pool-only.json', {
        services: [web],
        applications: [{ aid: 'a' }, { aid: 'b' }],
        selectors: [{ clients: ['198.18.2.0/24'], aid: 'b' }],
        default: { aid: 'a' },
        pool: { range: '20000-20999' },
      });
      expect(r.warnings).toBe('');
    });

    it('still warns where something is wrong', () => {
      const noPool = check('no-pool.json', {
        services: [web],
        applications: [{ aid: 'a' }, { aid: 'b', instances: [{ port: 19002 }] }],
        default: { aid: 'a' },
      });
      expect(noPool.warnings).toBe(
        `${noPool.path}: warning: applications[0] (a) has no instance and there is no pool: connections selected for it are refused\n` +
          `${noPool.path}: warning: applications[1] (b) is not named by any selector or the default: only a local client run with vpm exec --aid b reaches it\n`,
      );
      const server = check('coop-server-bad.json', {
        services: [web],
        applications: [{ aid: 'a1', instances: [{ port: 19001 }] }, { aid: 'ghost' }],
        default: { refuse: true },
        cooperative: {
          name: 'server',
          listen: '198.18.20.2:7070',
          peers: [{ name: 'client', keys: [{ id: 'k1', key: KEY }] }],
        },
      });
      expect(server.warnings).toBe(
        `${server.path}: warning: applications[1] (ghost) is not named by any selector or the default, nor offered to peers, and it has no instance and there is no pool: no connection ever reaches it\n`,
      );
    });
  });

  it('is a usage error (exit 2) without a file', () => {
    const r = vpm('check-config');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/missing required argument 'file'/);
  });
});
