/*
 * The systemd unit, scripts/systemd/vpm.service, and its drop-in for configs with
 * `applications[].executables`, scripts/systemd/executables.conf (docs/deployment.md,
 * "Running under systemd"), checked two ways:
 *
 *   - as systemd reads them: `systemd-analyze verify` (no systemd as PID 1
 *     needed) passes without a word, and fails on a copy broken on purpose; the
 *     directives the design rests on are there (Restart=always, ExecStart
 *     `up -c /etc/vpm/vpm.json --keep-state` of the installed CLI, SIGHUP as
 *     reload, /run/vpm kept over a stop); every capability named is one systemd
 *     knows (verify passes a misspelt one without a word).
 *   - the capabilities are real: the real daemon runs as systemd would start it,
 *     root under `setpriv` with exactly the unit's bounding set (no inheritable
 *     or ambient capabilities, no_new_privs for NoNewPrivileges=yes) and the
 *     unit's ExecStart arguments, in namespaces:
 *
 *        ns client                            ns host
 *   ┌─────────────────────┐      ┌─────────────────────────────────────────────┐
 *   │ c0 198.18.1.2/24    │═veth═│ h0 198.18.1.1/24, 2001:2:0:1::1/64          │
 *   │    2001:2:0:1::2/64 │      │ setpriv --bounding-set=<the unit's> vpm up  │
 *   │ default via h0      │      │   vpm0; VIPs 198.19.0.9, 2001:2:0:9::9      │
 *   │ client.mjs → :9000  │      │ instances on [::]: 19001 remote,            │
 *   └─────────────────────┘      │   19002 local (AID by its executable)       │
 *                                │ python3 as nobody → 198.19.0.9:9000         │
 *                                └─────────────────────────────────────────────┘
 *
 *     With the unit's set and the drop-in's, TCP through both VIPs reaches the
 *     remote instance, the local client is found by its executable, and the
 *     control socket gets its group (control.group). Then each capability is
 *     taken away in turn, and what the unit's comments say it is for breaks:
 *     the set is needed, and sufficient for all of this.
 *
 * Every daemon is stopped with SIGTERM and followed by `vpm down -c` (as an admin
 * would after `systemctl stop`): the host namespace then is as it was before.
 */

import { type ChildProcess, spawnSync } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireCommands, requireRoot, runCommand, waitFor } from '../support/netns.js';
import {
  type HostState,
  hostState,
  hostSysctls,
  jsonLines,
  REPO_ROOT,
  requireVpmBuild,
  runVpm,
  type VpmConfigFile,
  vpmArgv,
  waitJsonEvent,
  withTimeout,
  writeVpmConfig,
} from '../support/vpm.js';
import { runClient } from './topology.js';

const UNIT = join(REPO_ROOT, 'scripts', 'systemd', 'vpm.service');
const DROP_IN = join(REPO_ROOT, 'scripts', 'systemd', 'executables.conf');
/** Where the docs install the tree; the unit runs its CLI from there. */
const INSTALL_DIR = '/opt/vpm';

/**
 * The directives of a unit file or drop-in: "Section.Key" → its values in order
 * (a key may be given more than once). Comments and blank lines skipped.
 */
function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) {
      section = head[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0 || line.endsWith('\\')) throw new Error(`not a simple directive: "${raw}"`);
    const key = `${section}.${line.slice(0, eq).trim()}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return out;
}

/** The one value of `key`, failing the test if it is missing or given twice. */
function one(d: Map<string, string[]>, key: string): string {
  const v = d.get(key) ?? [];
  expect(v, key).toHaveLength(1);
  return v[0]!;
}

/** The capabilities of the CapabilityBoundingSet= lines (ORed, as systemd does). */
function boundingSet(d: Map<string, string[]>): string[] {
  const caps = (d.get('Service.CapabilityBoundingSet') ?? []).flatMap((v) => {
    if (v.startsWith('~') || v === '') throw new Error(`not an allow list: "${v}"`);
    return v.split(/\s+/);
  });
  return [...new Set(caps)];
}

/** systemd's capability table (`systemd-analyze capability`): lower-case name → number. */
function knownCapabilities(): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of runCommand('systemd-analyze', ['capability']).split('\n')) {
    const m = /^(cap_[a-z_]+)\s+(\d+)$/.exec(line.trim());
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

const scratch: string[] = [];

/**
 * `systemd-analyze verify` of `unitText` saved as vpm.service (with `dropIns` in
 * vpm.service.d/, which verify reads from beside the unit). verify, run as root,
 * writes the marker /run/systemd/systemd-units-load: it runs in a mount namespace
 * of its own with a tmpfs on /run, so nothing is left on the host.
 */
function verify(unitText: string, dropIns: Record<string, string> = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'vpm-unit-'));
  scratch.push(dir);
  const unit = join(dir, 'vpm.service');
  writeFileSync(unit, unitText);
  if (Object.keys(dropIns).length > 0) {
    mkdirSync(join(dir, 'vpm.service.d'));
    for (const [name, text] of Object.entries(dropIns))
      writeFileSync(join(dir, 'vpm.service.d', name), text);
  }
  const r = spawnSync(
    'unshare',
    [
      '--mount',
      '--',
      'sh',
      '-c',
      'mount -t tmpfs vpm-verify /run && exec systemd-analyze verify "$1"',
      'sh',
      unit,
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  if (r.error) throw r.error;
  // Success is exit status 0 and no output: verify reports a mistake it can
  // skip (an unknown key, a bad value) on stderr and still exits 0.
  return r.status === 0 ? `${r.stdout}${r.stderr}`.trim() : `exit ${r.status}: ${r.stderr}`;
}

afterAll(() => {
  for (const d of scratch.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('scripts/systemd/vpm.service as systemd reads it', () => {
  const unitText = readFileSync(UNIT, 'utf8');
  const dropInText = readFileSync(DROP_IN, 'utf8');
  const unit = directives(unitText);

  beforeAll(() => {
    requireRoot(); // verify runs in a mount namespace of its own
    requireCommands('systemd-analyze', 'unshare');
  });

  it('passes systemd-analyze verify without a word, alone and with the executables drop-in', () => {
    expect(verify(unitText)).toBe('');
    expect(verify(unitText, { 'executables.conf': dropInText })).toBe('');
  });

  it('fails verify when broken on purpose: a misspelt directive, a missing program, a bad drop-in', () => {
    const misspelt = unitText.replace(/^Restart=always$/m, 'Restrat=always');
    expect(misspelt).not.toBe(unitText);
    expect(verify(misspelt)).toMatch(/Unknown key 'Restrat'/);
    const missing = unitText.replace(
      /^ExecStart=\/usr\/bin\/node /m,
      'ExecStart=/usr/bin/nodejs-missing ',
    );
    expect(missing).not.toBe(unitText);
    expect(verify(missing)).toMatch(/^exit 1: .*nodejs-missing is not executable/s);
    const badDropIn = dropInText.replace(/^CapabilityBoundingSet=/m, 'CapabilityBoundSet=');
    expect(badDropIn).not.toBe(dropInText);
    expect(verify(unitText, { 'executables.conf': badDropIn })).toMatch(
      /Unknown key 'CapabilityBoundSet'/,
    );
  });

  it('restarts always, runs the installed CLI with --keep-state, reloads by SIGHUP', () => {
    expect(one(unit, 'Service.Type')).toBe('simple');
    expect(one(unit, 'Service.Restart')).toBe('always');
    expect(one(unit, 'Service.RestartSec')).toMatch(/^\d+(ms|s)?$/);
    const bin = (
      JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
        bin: Record<string, string>;
      }
    ).bin.vpm;
    expect(one(unit, 'Service.ExecStart')).toBe(
      `/usr/bin/node ${INSTALL_DIR}/${bin} up -c /etc/vpm/vpm.json --keep-state`,
    );
    expect(one(unit, 'Service.ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    // A stop must not undo the host state: no `vpm down` on the way out.
    expect(unit.has('Service.ExecStop')).toBe(false);
    expect(unit.has('Service.ExecStopPost')).toBe(false);
    expect(one(unit, 'Service.KillMode')).toBe('mixed');
  });

  it('keeps /run/vpm over stop and restart, writable in a read-only system', () => {
    expect(one(unit, 'Service.RuntimeDirectory')).toBe('vpm');
    expect(one(unit, 'Service.RuntimeDirectoryPreserve')).toBe('yes');
    expect(one(unit, 'Service.ProtectSystem')).toBe('strict');
    // vpm writes net sysctls: /proc/sys read-only but for /proc/sys/net.
    expect(one(unit, 'Service.ProtectKernelTunables')).toBe('yes');
    expect(unit.get('Service.ReadWritePaths')).toEqual(['/proc/sys/net']);
    expect(one(unit, 'Service.DevicePolicy')).toBe('closed');
    expect(one(unit, 'Service.DeviceAllow')).toBe('/dev/net/tun rw');
    // V8's JIT needs writable and executable memory.
    expect(unit.has('Service.MemoryDenyWriteExecute')).toBe(false);
  });

  it('names only capabilities systemd knows (verify would pass a misspelt one)', () => {
    const known = knownCapabilities();
    expect(known.get('cap_net_admin')).toBe(12);
    const named = [...boundingSet(unit), ...boundingSet(directives(dropInText))];
    expect(named.length).toBeGreaterThan(0);
    for (const cap of named) expect(known.has(cap.toLowerCase()), cap).toBe(true);
  });
});

// --- the capabilities, with the real daemon ----------------------------------

const VIP = '198.19.0.9';
const VIP6 = '2001:2:0:9::9';
const PORT = 9000;
const PY = realpathSync('/usr/bin/python3');
/** Root-owned control socket, its group this one: needs CAP_CHOWN. */
const SOCKET_GROUP = 'nogroup';

const CONFIG: VpmConfigFile = {
  services: [
    { name: 'web', address: VIP, port: PORT },
    { name: 'web6', address: VIP6, port: PORT },
  ],
  applications: [
    { aid: 'remote', instances: [{ port: 19001 }] },
    // A local client gets this AID by the program owning its socket.
    { aid: 'local', executables: [PY], instances: [{ port: 19002 }] },
  ],
  selectors: [{ clients: ['198.18.1.0/24', '2001:2:0:1::/64'], aid: 'remote' }],
  default: { refuse: true },
  control: { group: SOCKET_GROUP },
};

/** What taking one capability away must break, as the unit's comments say. */
type Loss = { up: RegExp } | { executables: true };
const WITHOUT: Record<string, Loss> = {
  CAP_NET_ADMIN: { up: /needs CAP_NET_ADMIN .*ioctl\(TUNSETIFF\): Operation not permitted/ },
  CAP_CHOWN: { up: /EPERM: operation not permitted, chown '.*vpm\.sock'/ },
  CAP_SYS_PTRACE: { executables: true },
  CAP_DAC_READ_SEARCH: { executables: true },
};

/** Linux capability bits as /proc/PID/status prints them (hex). */
function mask(caps: readonly string[], known: Map<string, number>): bigint {
  let m = 0n;
  for (const c of caps) m |= 1n << BigInt(known.get(c.toLowerCase())!);
  return m;
}

describe('the unit’s capabilities with the real daemon (setpriv, namespaces)', () => {
  const unit = directives(readFileSync(UNIT, 'utf8'));
  const unitCaps = boundingSet(unit);
  const dropInCaps = boundingSet(directives(readFileSync(DROP_IN, 'utf8')));
  const allCaps = [...new Set([...unitCaps, ...dropInCaps])];
  const noNewPrivs = one(unit, 'Service.NoNewPrivileges') === 'yes';
  let known: Map<string, number>;
  let lab: NetLab;
  let host: string;
  let client: string;
  let pristine: HostState;
  let pristineSysctls: string[];
  /** `vpm up` takes --keep-state (the lead's change): else the unit's args without it. */
  let keepState: boolean;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'setpriv', 'sysctl', 'getent', 'systemd-analyze');
    requireVpmBuild();
    known = knownCapabilities();
    lab = new NetLab('systemd');
    host = lab.namespace('host');
    client = lab.namespace('client');
    lab.veth({ ns: client, dev: 'c0' }, { ns: host, dev: 'h0' });
    for (const [ns, dev, a4, a6] of [
      [client, 'c0', '198.18.1.2/24', '2001:2:0:1::2/64'],
      [host, 'h0', '198.18.1.1/24', '2001:2:0:1::1/64'],
    ] as const) {
      lab.run(ns, 'ip', ['addr', 'add', a4, 'dev', dev]);
      lab.run(ns, 'ip', ['-6', 'addr', 'add', a6, 'dev', dev, 'nodad']);
    }
    lab.run(client, 'ip', ['route', 'add', 'default', 'via', '198.18.1.1']);
    lab.run(client, 'ip', ['-6', 'route', 'add', 'default', 'via', '2001:2:0:1::1']);
    // Off before vpm, so that what it sets (and `vpm down` restores) shows.
    lab.run(host, 'sysctl', ['-qw', 'net.ipv4.ip_forward=0', 'net.ipv6.conf.all.forwarding=0']);
    pristine = hostState(lab, host);
    pristineSysctls = hostSysctls(lab, host);
    // The instances listen on the wildcard address: they outlive every daemon.
    for (const [name, port] of [
      ['remote', 19001],
      ['local', 19002],
    ] as const) {
      const srv = lab.spawn(host, process.execPath, [
        join(REPO_ROOT, 'test', 'integration', 'fixtures', 'instance-server.mjs'),
        JSON.stringify({ name, host: '::', port }),
      ]);
      await waitJsonEvent(lab, srv, 'ready', 10_000);
    }
    const help = await runVpm(lab, host, ['up', '--help']);
    keepState = help.stdout.includes('--keep-state');
  }, 60_000);

  afterAll(async () => {
    await lab?.cleanup();
  });

  /** The unit's ExecStart arguments after the CLI, with the config file replaced by `cfg`. */
  function upArgs(cfg: string): string[] {
    const argv = one(unit, 'Service.ExecStart').split(/\s+/).slice(2);
    const c = argv.indexOf('-c');
    expect(argv[c + 1]).toBe('/etc/vpm/vpm.json');
    argv[c + 1] = cfg;
    return keepState ? argv : argv.filter((a) => a !== '--keep-state');
  }

  /** `vpm up` as the unit starts it, with bounding set `caps`. */
  function up(caps: readonly string[]): { child: ChildProcess; cfg: string; socket: string } {
    const dir = lab.tempDir();
    const cfg = writeVpmConfig(dir, CONFIG);
    const bounding = ['-all', ...caps.map((c) => `+${c.toLowerCase().replace(/^cap_/, '')}`)];
    const child = lab.spawn(host, 'setpriv', [
      `--bounding-set=${bounding.join(',')}`,
      '--inh-caps=-all',
      '--ambient-caps=-all',
      ...(noNewPrivs ? ['--no-new-privs'] : []),
      '--',
      process.execPath,
      ...vpmArgv(),
      ...upArgs(cfg),
    ]);
    return { child, cfg, socket: join(dir, 'vpm.sock') };
  }

  function output(child: ChildProcess): string {
    const o = lab.output(child);
    return `--- vpm stdout ---\n${o.stdout}\n--- vpm stderr ---\n${o.stderr}`;
  }

  /** SIGTERM, as systemctl stop sends it, then `vpm down -c`: the host as before. */
  async function stopAndDown(child: ChildProcess, cfg: string): Promise<void> {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(child.pid!, 'SIGTERM');
      const exit = await withTimeout(lab.exited(child), 15_000, 'vpm to exit on SIGTERM');
      expect(exit.code, output(child)).toBe(0);
    }
    const down = await runVpm(lab, host, ['down', '-c', cfg]);
    expect(down.code, down.stderr).toBe(0);
    expect(hostState(lab, host)).toEqual(pristine);
    expect(hostSysctls(lab, host)).toEqual(pristineSysctls);
  }

  /** The daemon's capability sets and no_new_privs, from /proc. */
  function procCaps(pid: number): {
    bnd: bigint;
    eff: bigint;
    inh: bigint;
    amb: bigint;
    nnp: string;
  } {
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (k: string): string => new RegExp(`^${k}:\\s*(\\S+)$`, 'm').exec(st)![1]!;
    const hex = (k: string): bigint => BigInt(`0x${field(k)}`);
    return {
      bnd: hex('CapBnd'),
      eff: hex('CapEff'),
      inh: hex('CapInh'),
      amb: hex('CapAmb'),
      nnp: field('NoNewPrivs'),
    };
  }

  /** A local client: python3 as nobody connects to VIP:9000 and reads the instance's hello. */
  function localClient(): { hello?: Record<string, unknown>; error?: string } {
    const out = lab.run(host, 'setpriv', [
      '--reuid=nobody',
      '--regid=nogroup',
      '--clear-groups',
      PY,
      '-c',
      `import json, socket
try:
    s = socket.create_connection(("${VIP}", ${PORT}), timeout=5)
    print(json.dumps({"hello": json.loads(s.makefile().readline())}))
except OSError as e:
    print(json.dumps({"error": type(e).__name__}))`,
    ]);
    return JSON.parse(out) as { hello?: Record<string, unknown>; error?: string };
  }

  async function expectRemoteClientsServed(): Promise<void> {
    for (const [vip, from] of [
      [VIP, '::ffff:198.18.1.2'],
      [VIP6, '2001:2:0:1::2'],
    ] as const) {
      const r = await runClient(lab, client, { mode: 'hello', host: vip, port: PORT });
      expect(r.event, r.output).toBe('done');
      expect(r.hello, r.output).toMatchObject({ instance: 'remote', remoteAddress: from });
    }
  }

  async function expectLocalClientRefused(child: ChildProcess): Promise<void> {
    expect(localClient()).toEqual({ error: 'ConnectionRefusedError' });
    // The daemon could not see who owns the socket: no AID for it.
    await waitFor(
      () =>
        jsonLines(lab.output(child).stdout).some(
          (e) => e.event === 'flow_refused' && e.reason === 'no_aid',
        ),
      { what: 'the flow_refused no_aid log line' },
    );
  }

  it('with the unit’s set and the drop-in’s: TCP through both VIPs, the local client by its executable, the socket’s group', async () => {
    const { child, cfg, socket } = up(allCaps);
    try {
      await waitJsonEvent(lab, child, 'ready', 20_000);
      const caps = procCaps(child.pid!);
      expect(caps.bnd).toBe(mask(allCaps, known));
      expect(caps.eff).toBe(mask(allCaps, known));
      expect([caps.inh, caps.amb]).toEqual([0n, 0n]);
      expect(caps.nnp).toBe(noNewPrivs ? '1' : '0');
      // What needs no capability of its own: the net sysctls (root's uid may).
      expect(lab.run(host, 'cat', ['/proc/sys/net/ipv4/ip_forward']).trim()).toBe('1');
      expect(lab.run(host, 'cat', ['/proc/sys/net/ipv6/conf/all/forwarding']).trim()).toBe('1');
      const gid = Number(runCommand('getent', ['group', SOCKET_GROUP]).split(':')[2]);
      expect(statSync(socket).gid).toBe(gid);
      await expectRemoteClientsServed();
      const local = localClient();
      expect(local.hello, JSON.stringify(local)).toMatchObject({
        instance: 'local',
        remoteAddress: '::ffff:198.19.255.2',
      });
    } finally {
      await stopAndDown(child, cfg);
    }
  });

  it('with the unit’s set alone (no drop-in): everything but the executables lookup', async () => {
    const { child, cfg } = up(unitCaps);
    try {
      await waitJsonEvent(lab, child, 'ready', 20_000);
      expect(procCaps(child.pid!).bnd).toBe(mask(unitCaps, known));
      await expectRemoteClientsServed();
      await expectLocalClientRefused(child);
    } finally {
      await stopAndDown(child, cfg);
    }
  });

  it('every capability of the two sets has a known use (the table of this test)', () => {
    expect(Object.keys(WITHOUT).sort()).toEqual([...allCaps].sort());
  });

  describe.each(Object.entries(WITHOUT))('without %s', (cap, loss) => {
    it('breaks what the unit says it is for', async () => {
      const { child, cfg } = up(allCaps.filter((c) => c !== cap));
      try {
        if ('up' in loss) {
          const exit = await withTimeout(lab.exited(child), 20_000, 'vpm up to fail');
          expect(exit.code, output(child)).toBe(1);
          expect(lab.output(child).stderr).toMatch(loss.up);
        } else {
          await waitJsonEvent(lab, child, 'ready', 20_000);
          await expectRemoteClientsServed();
          await expectLocalClientRefused(child);
        }
      } finally {
        await stopAndDown(child, cfg);
      }
    });
  });
});
