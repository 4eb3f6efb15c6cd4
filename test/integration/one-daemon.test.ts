/**
 * One vpm for both ends (FIG. 8): clients and several instances on the same host.
 * A local client's AID — here from the executable that owns its socket, as the
 * seed's configurator maps pathnames to AIDs — chooses the instance of the same
 * AID.
 *
 *   ns host: vpm (TUN 198.19.255.1), instance a1 :19001, instance a2 :19002,
 *            a Python client (AID a1 by its executable), a Node client (AID a2)
 */

import { realpathSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NetLab, requireRoot } from '../support/netns.js';
import { VpmDaemon } from '../support/vpm.js';
import { runClient, startInstance } from './topology.js';

const VIP = '198.19.0.9';
const lab = new NetLab('fig8');
let host: string;
let vpm: VpmDaemon;
let python: string;

beforeAll(async () => {
  requireRoot();
  host = lab.namespace('host', { ipv6: false });
  // The real binary behind `python3` (pyenv shims and symlinks resolved), as /proc/PID/exe shows it.
  python = lab
    .run(host, 'python3', ['-c', 'import os, sys; print(os.path.realpath(sys.executable))'])
    .trim();
  vpm = await VpmDaemon.start(lab, host, {
    services: [{ name: 'web', address: VIP, port: 9000 }],
    applications: [
      { aid: 'a1', executables: [python], instances: [{ port: 19001 }] },
      { aid: 'a2', executables: [realpathSync(process.execPath)], instances: [{ port: 19002 }] },
    ],
    default: { refuse: true },
  });
  await startInstance(lab, host, 'a1', 19001);
  await startInstance(lab, host, 'a2', 19002);
}, 60_000);

afterAll(async () => {
  await vpm?.stop().catch(() => {});
  await lab.cleanup();
});

describe('one daemon for both ends (FIG. 8)', () => {
  it('a local Node client reaches the instance of its AID (a2) by its executable', async () => {
    const r = await runClient(lab, host, { mode: 'hello', host: VIP, port: 9000 });
    expect(r.event, r.output).toBe('done');
    expect((r as Record<string, unknown>).hello).toMatchObject({
      instance: 'a2',
      remoteAddress: '198.19.255.2',
    });
    expect(r).toMatchObject({ remoteAddress: VIP, remotePort: 9000 });
  });

  it('a local Python client reaches the instance of its AID (a1) by its executable', async () => {
    const out = lab.run(host, 'python3', [
      '-c',
      `import socket, json
s = socket.create_connection(("${VIP}", 9000), timeout=5)
hello = json.loads(s.makefile().readline())
print(json.dumps({"hello": hello, "peer": list(s.getpeername())}))`,
    ]);
    const r = JSON.parse(out) as { hello: Record<string, unknown>; peer: [string, number] };
    expect(r.hello).toMatchObject({ instance: 'a1', remoteAddress: '198.19.255.2' });
    expect(r.peer).toEqual([VIP, 9000]);
    // The daemon logs right after it sends the SYN on; give its stdout a moment.
    let placed: Record<string, unknown>[] = [];
    for (let i = 0; i < 250 && placed.length < 2; i++) {
      placed = vpm.logs().filter((l) => l.event === 'flow_created' && typeof l.how === 'string');
      if (placed.length < 2) await new Promise((res) => setTimeout(res, 20));
    }
    expect(placed.map((l) => l.aid).sort(), JSON.stringify(vpm.logs())).toEqual(['a1', 'a2']);
    expect(String(placed.find((l) => l.aid === 'a1')?.how)).toContain(python);
  });
});
