/*
 * The virtual layer survives the daemon (issue 13, item 4): a server under
 * `vpm exec` keeps its real port across `kill -9` of vpm and a new `vpm up` —
 * the registry is read back from its state file, the program is recognized by
 * pid and start time, its established connection continues byte-identical, new
 * connections reach it again, and its port goes back to the pool only when the
 * program itself is gone. Real kernel, real CLI, real signals.
 */

import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot, waitFor } from '../support/netns.js';
import { type VpmConfigFile, VpmDaemon, vpmArgv, writeVpmConfig } from '../support/vpm.js';
import {
  CLIENT_A,
  clientResult,
  expectIntact,
  runClient,
  SERVER_FIXTURE,
  spawnClient,
  type Topology,
  twoTenants,
  VIP,
} from './topology.js';

const MB = 1024 * 1024;

const CONFIG: VpmConfigFile = {
  services: [{ name: 'web', address: VIP, port: 9000 }],
  applications: [{ aid: 'srv' }],
  default: { aid: 'srv' },
  pool: { range: '20000-20009', quarantineMs: 500, waitTimeoutMs: 3000 },
};

interface Row {
  aid: string;
  port: number;
  pids: number[];
  source: string;
}

describe('a server under vpm exec across kill -9 of the daemon', () => {
  const lab = new NetLab('execcrash');
  let topo: Topology;
  let dir: string;
  let configPath: string;
  const daemons: VpmDaemon[] = [];

  beforeAll(() => {
    requireRoot();
    topo = twoTenants(lab);
    dir = lab.tempDir();
    configPath = writeVpmConfig(dir, CONFIG);
  });

  afterAll(async () => {
    for (const d of daemons) if (d.alive) await d.stop().catch(() => undefined);
    await lab.cleanup();
  });

  async function up(): Promise<VpmDaemon> {
    const d = await VpmDaemon.startFile(lab, topo.host, configPath, dir);
    daemons.push(d);
    return d;
  }

  function execServer(d: VpmDaemon): ChildProcess {
    return lab.spawn(topo.host, process.execPath, [
      ...vpmArgv(),
      'exec',
      '--aid',
      'srv',
      '-s',
      d.socket,
      '--',
      process.execPath,
      SERVER_FIXTURE,
      JSON.stringify({ name: 'srv', host: '0.0.0.0', port: 9000 }),
    ]);
  }

  it('keeps its real port, its connection and new ones; its port returns to the pool when it exits', async () => {
    let d = await up();
    const server = execServer(d);
    await lab.waitForOutput(server, /"event":"ready"/, { timeoutMs: 15_000 });
    const before = (await d.cliJson('instances')) as Row[];
    expect(before).toHaveLength(1);
    expect(before[0]!.pids).toEqual([expect.any(Number)]);
    const realPort = before[0]!.port;

    const client = spawnClient(lab, topo.tenantA, {
      mode: 'xfer',
      localAddress: CLIENT_A,
      up: 48 * MB,
      down: 1 * MB,
      paceMs: 3000,
      timeoutMs: 30_000,
    });
    await waitFor(async () => (await d.flows()).some((f) => f.bytesIn > 4 * MB), {
      what: 'the transfer under way',
      intervalMs: 20,
    });
    await d.kill();
    d = await up();
    const reg = d.logs().find((l) => l.event === 'registry_adopted');
    expect(reg, d.output()).toBeDefined();
    expect(reg!.groups).toEqual([`srv tcp/9000 → ${realPort}`]);
    expect(d.logs().find((l) => l.event === 'state_adopted')?.flows).toBe(1);
    // The same instance, the same program, the same real port.
    const after = (await d.cliJson('instances')) as Row[];
    expect(after.map((r) => [r.aid, r.port, r.pids])).toEqual([['srv', realPort, before[0]!.pids]]);

    expectIntact(await clientResult(lab, client, 35_000), 48 * MB);
    // A new connection after the crash reaches the program too.
    const hello = await runClient(lab, topo.tenantA, { mode: 'hello', localAddress: CLIENT_A });
    expect(hello.event, hello.output).toBe('done');
    expect((hello.hello as Record<string, unknown>).instance).toBe('srv');

    // The program ends (its registration has no connection to end it now): the
    // sweep finds its process gone, the instance leaves and its port goes to quarantine.
    // The program itself, by its pid (vpm exec runs it as its child).
    process.kill(before[0]!.pids[0]!, 'SIGKILL');
    await lab.exited(server);
    await waitFor(async () => ((await d.cliJson('instances')) as Row[]).length === 0, {
      what: 'the instance of the ended program to go',
      timeoutMs: 10_000,
    });
    const pool = (await d.stats()) as unknown as { pool: { inUse: number } };
    expect(pool.pool.inUse).toBe(0);
    expect(await d.stop('SIGTERM')).toEqual({ code: 0, signal: null });
  });
});
