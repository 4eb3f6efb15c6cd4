/*
 * Programs of unprivileged users in the virtual layer, with the real daemon,
 * real users (nobody, and a uid without a passwd entry) made with setpriv, and
 * real clients in other namespaces (docs/security.md).
 *
 *     ns tenant-a (198.18.1.2)          ns host                              ns tenant-b (198.18.2.2)
 *   curl → 198.19.0.9:9000   ══veth══  vpm up (control.group nogroup,  ══veth══  curl → 198.19.0.9:9000
 *   selector → AID a                    monitorGroup 64999), servers            selector → AID b
 *                                       under vpm exec as nobody or root
 *
 * AID a lists users ["nobody"]; AID b lists none (root only). Who a caller is
 * comes from the kernel (SO_PEERCRED), whatever its messages claim.
 */

import type { ChildProcess } from 'node:child_process';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { controlRequest } from '../../src/control/client.js';
import { requirePreload } from '../exec/helpers.js';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  jsonLines,
  requireVpmBuild,
  type VpmConfigFile,
  VpmDaemon,
  vpmArgv,
  withTimeout,
} from '../support/vpm.js';
import { twoTenants, VIP } from './topology.js';

const ASK = fileURLToPath(new URL('./fixtures/control-ask.py', import.meta.url));
const NOBODY = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups'];
/** A monitoring user: a uid no application lists, in the monitoring group 64999. */
const MONITOR = ['setpriv', '--reuid=64998', '--regid=nogroup', '--groups=64999'];
const METRICS = '127.0.0.1:9464';
/** Not PATH's python3: a user like nobody may not reach root's (pyenv shims in /root). */
const PY = '/usr/bin/python3';

const CONFIG: VpmConfigFile = {
  services: [{ name: 'web', address: VIP, port: 9000 }],
  applications: [
    { aid: 'a', users: ['nobody'], instances: [] },
    { aid: 'b', instances: [] },
  ],
  selectors: [
    { clients: ['198.18.1.0/24'], aid: 'a' },
    { clients: ['198.18.2.0/24'], aid: 'b' },
  ],
  default: { refuse: true },
  pool: { range: '20000-20009', quarantineMs: 200, waitTimeoutMs: 1000 },
  control: { group: 'nogroup', monitorGroup: 64999 },
  metrics: { listen: METRICS },
};

interface Instance {
  aid: string;
  port: number;
  pids: number[];
  source: string;
}

interface Answer {
  request: { cmd: string };
  response: { ok: boolean; result?: unknown; error?: { code: string; message: string } };
}

describe('unprivileged programs under vpm exec, AIDs bound to users', () => {
  let lab: NetLab;
  let host: string;
  let tenantA: string;
  let tenantB: string;
  let vpm: VpmDaemon;
  let www: string;

  beforeAll(async () => {
    requireRoot();
    requireCommands('ip', 'setpriv', 'curl', 'python3');
    requireVpmBuild();
    requirePreload();
    lab = new NetLab('users');
    ({ host, tenantA, tenantB } = twoTenants(lab));
    vpm = await VpmDaemon.start(lab, host, CONFIG);
    www = lab.tempDir();
    chmodSync(www, 0o755);
    writeFileSync(join(www, 'index.html'), 'served by a user\n', { mode: 0o644 });
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  const registered = async (): Promise<Instance[]> =>
    ((await controlRequest(vpm.socket, 'instances')) as Instance[]).filter(
      (i) => i.source === 'registered',
    );
  const refused = async (): Promise<Record<string, number>> =>
    ((await vpm.stats()) as unknown as { control: { refused: Record<string, number> } }).control
      .refused;
  const uidOf = (pid: number): number =>
    Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  const curl = (ns: string) =>
    lab.run(ns, 'curl', ['-sS', '-m', '5', `http://${VIP}:9000/`]).toString();
  const vpmCli = (prefix: readonly string[], args: readonly string[]): ChildProcess =>
    lab.spawn(host, prefix[0]!, [...prefix.slice(1), process.execPath, ...vpmArgv(), ...args]);
  /** `python3 -m http.server 9000` as nobody under `vpm exec --aid AID` (itself as nobody), once it serves. */
  const httpServerAsNobody = async (aid: string): Promise<ChildProcess> => {
    const server = vpmCli(NOBODY, [
      'exec',
      '--aid',
      aid,
      '-s',
      vpm.socket,
      '--',
      PY,
      '-u',
      '-m',
      'http.server',
      '9000',
      '--directory',
      www,
    ]);
    await lab.waitForOutput(server, /Serving HTTP on \S+ port 9000/, {
      stream: 'stdout',
      timeoutMs: 15_000,
    });
    return server;
  };
  const ask = async (prefix: readonly string[], ...requests: object[]): Promise<Answer[]> => {
    const child = lab.spawn(host, prefix[0]!, [
      ...prefix.slice(1),
      PY,
      ASK,
      vpm.socket,
      ...requests.map((r) => JSON.stringify(r)),
    ]);
    await withTimeout(lab.exited(child), 15_000, 'control-ask.py');
    return jsonLines(lab.output(child).stdout) as unknown as Answer[];
  };

  it('the socket is created 0660 root:nogroup, its directory searchable', () => {
    const st = statSync(vpm.socket);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o660);
    expect(st.uid).toBe(0);
    expect(st.gid).toBe(65534);
    expect(statSync(dirname(vpm.socket)).mode & 0o001).toBe(0o001);
  });

  it('python3 -m http.server 9000 as nobody under vpm exec --aid a (vpm exec itself as nobody): a client reaches it through the VIP, and its port is released when it ends', async () => {
    const server = await httpServerAsNobody('a');
    const regs = (await registered()).filter((i) => i.aid === 'a');
    expect(regs).toHaveLength(1);
    const pid = regs[0]!.pids[0]!;
    expect(uidOf(pid)).toBe(65534);
    expect(curl(tenantA)).toBe('served by a user\n');
    await lab.stop(server, 'SIGTERM', 5000);
    await waitFor(async () => (await registered()).length === 0, {
      what: "nobody's registration to end with its program",
    });
  });

  it("a local client on the vpm host that no selector names belongs to its user's AID: nobody's curl reaches AID a, root's is refused", async () => {
    const server = await httpServerAsNobody('a');
    try {
      const before = await vpm.stats();
      // Plain curl, no vpm exec: its source is the TUN address, which no selector
      // lists; the socket's owner (uid 65534, nobody) is in AID a's users.
      const asNobody = lab.run(host, NOBODY[0]!, [
        ...NOBODY.slice(1),
        'curl',
        '-sS',
        '-m',
        '5',
        `http://${VIP}:9000/`,
      ]);
      expect(asNobody).toBe('served by a user\n');
      // root is in no AID's users (AID b lists none: root only, but only AIDs that
      // list users pick local clients by their user), and the default refuses.
      const asRoot = lab.spawn(host, 'curl', ['-sS', '-m', '5', `http://${VIP}:9000/`]);
      const exit = await withTimeout(lab.exited(asRoot), 10_000, 'curl as root');
      expect(exit.code).not.toBe(0);
      expect(lab.output(asRoot).stderr).toMatch(/curl: \(7\) Failed to connect/);
      const after = await vpm.stats();
      const refusedLocal = (s: unknown) =>
        (s as { localClientsRefused: number }).localClientsRefused;
      expect(refusedLocal(after) - refusedLocal(before)).toBe(1);
    } finally {
      await lab.stop(server, 'SIGTERM', 5000);
    }
    await waitFor(async () => (await registered()).length === 0, {
      what: "nobody's registration to end with its program",
    });
  });

  it('the same program as nobody claiming AID b is refused: bind fails with a clear message, nothing is registered, the refusal is counted and logged', async () => {
    const before = await refused();
    // The issue's own command line: vpm exec as root, the program drops to nobody.
    const server = vpmCli(
      ['env'],
      [
        'exec',
        '--aid',
        'b',
        '-s',
        vpm.socket,
        '--',
        ...NOBODY,
        PY,
        '-u',
        '-m',
        'http.server',
        '9000',
        '--directory',
        www,
      ],
    );
    const exit = await withTimeout(lab.exited(server), 15_000, 'the refused server to exit');
    const { stderr } = lab.output(server);
    expect(exit.code).not.toBe(0);
    expect(stderr).toMatch(
      /vpm: uid 65534 \(nobody\), pid \d+ may not use AID "b" .*\(ERR_AID_DENIED\); bind of tcp 0\.0\.0\.0:9000 fails with EACCES/,
    );
    expect(stderr).toContain('PermissionError');
    expect(await registered()).toEqual([]);
    const after = await refused();
    expect(after.aid).toBe(before.aid! + 1);
    await waitFor(
      () =>
        vpm
          .logs()
          .some(
            (l) => l.event === 'control_refused' && l.code === 'ERR_AID_DENIED' && l.uid === 65534,
          ),
      { what: 'the refusal in the daemon log' },
    );
    const metrics = lab.run(host, 'curl', ['-sS', `http://${METRICS}/metrics`]).toString();
    expect(metrics).toContain(`vpm_control_refused_total{reason="aid"} ${after.aid}`);
  });

  it('hand-written control messages of nobody claiming another pid or another AID are refused', async () => {
    const before = await refused();
    const bind = (aid: string, pid: number | string) => ({
      cmd: 'bind',
      args: { aid, proto: 'tcp', vport: 9000, pid, fd: 3 },
    });
    const answers = await ask(
      NOBODY,
      bind('a', 1), // pid 1 is not nobody's process
      bind('b', '$PID'), // its own pid, another user's AID
      { cmd: 'connect', args: { aid: 'b', local: '198.19.255.2:40000', pid: '$PID' } },
      { cmd: 'connect', args: { aid: 'a', local: '198.19.255.2:40001', pid: '$PID' } },
      { cmd: 'hello', args: { aid: 'b', pid: '$PID' } },
      { cmd: 'reload' },
      { cmd: 'flows' },
      { cmd: 'ping' },
    );
    expect(answers.map((a) => a.response.ok || a.response.error!.code)).toEqual([
      'ERR_PID_MISMATCH',
      'ERR_AID_DENIED',
      'ERR_AID_DENIED',
      true,
      'ERR_AID_DENIED',
      'ERR_CONTROL_DENIED',
      'ERR_CONTROL_DENIED',
      true,
    ]);
    expect(answers[0]!.response.error!.message).toContain('claims pid 1');
    expect(await registered()).toEqual([]);
    const after = await refused();
    expect(after).toEqual({
      command: before.command! + 2,
      aid: before.aid! + 3,
      pid: before.pid! + 1,
    });
  });

  it('the monitoring group: vpm flows and vpm stats work; a registration and a reload do not', async () => {
    const flows = vpmCli(MONITOR, ['flows', '--json', '-s', vpm.socket]);
    expect((await withTimeout(lab.exited(flows), 15_000, 'vpm flows')).code).toBe(0);
    expect(Array.isArray(JSON.parse(lab.output(flows).stdout))).toBe(true);
    const stats = vpmCli(MONITOR, ['stats', '--json', '-s', vpm.socket]);
    expect((await withTimeout(lab.exited(stats), 15_000, 'vpm stats')).code).toBe(0);
    expect(JSON.parse(lab.output(stats).stdout)).toHaveProperty('control.refused');

    const exec = vpmCli(MONITOR, ['exec', '--aid', 'a', '-s', vpm.socket, '--', 'true']);
    expect((await withTimeout(lab.exited(exec), 15_000, 'vpm exec')).code).toBe(1);
    expect(lab.output(exec).stderr).toContain('"hello" is not allowed for uid 64998');

    const answers = await ask(
      MONITOR,
      { cmd: 'bind', args: { aid: 'a', proto: 'tcp', vport: 9000, pid: '$PID', fd: 3 } },
      { cmd: 'reload' },
      { cmd: 'instances' },
    );
    expect(answers.map((a) => a.response.ok || a.response.error!.code)).toEqual([
      'ERR_CONTROL_DENIED',
      'ERR_CONTROL_DENIED',
      true,
    ]);
    expect(await registered()).toEqual([]);
  });

  it('a server that binds as root under vpm exec and then drops to nobody keeps its registration and its clients', async () => {
    const script = [
      'import http.server, os',
      `os.chdir(${JSON.stringify(www)})`,
      "s = http.server.HTTPServer(('', 9000), http.server.SimpleHTTPRequestHandler)",
      'os.setgroups([]); os.setgid(65534); os.setuid(65534)',
      "print('dropped', os.getuid(), flush=True)",
      's.serve_forever()',
    ].join('\n');
    const server = vpmCli(
      ['env'],
      ['exec', '--aid', 'b', '-s', vpm.socket, '--', 'python3', '-c', script],
    );
    await lab.waitForOutput(server, /dropped 65534/, { stream: 'stdout', timeoutMs: 15_000 });
    const regs = (await registered()).filter((i) => i.aid === 'b');
    expect(regs).toHaveLength(1);
    expect(uidOf(regs[0]!.pids[0]!)).toBe(65534);
    expect(curl(tenantB)).toBe('served by a user\n');
    expect(curl(tenantB)).toBe('served by a user\n');
    expect((await registered()).filter((i) => i.aid === 'b')).toHaveLength(1);
    await lab.stop(server, 'SIGTERM', 5000);
    await waitFor(async () => (await registered()).length === 0, {
      what: 'the registration to end with the program',
    });
  });
});
