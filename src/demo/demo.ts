/**
 * `vpm demo`: the whole product in under a minute, in a sandbox of network
 * namespaces it builds and removes again.
 *
 *   tenant-a (198.18.1.2) ──veth── host (198.18.1.1 | 198.18.2.1) ──veth── tenant-b (198.18.2.2,
 *                                   │                 2001:2:0:2::1)          2001:2:0:2::2)
 *                                   │ vpm daemon, TUN vpm0 (198.19.255.1, 2001:2:0:ff::1)
 *                                   │ virtual service web = 198.19.0.9:9000 and [2001:2:0:9::9]:9000
 *                                   │ copy "A" of a server program, `vpm exec --aid tenant-a` … listen 9000
 *                                   │ copy "B" of the same program, `vpm exec --aid tenant-b` … listen 9000
 *
 * Both copies "bind 9000": the bind/connect library (loaded by vpm exec) gets each
 * a real port from vpm's pool. Tenant A's clients (198.18.1.0/24) belong to AID
 * tenant-a, tenant B's (198.18.2.0/24, and over IPv6 2001:2:0:2::/64) to tenant-b;
 * a client on the host itself goes to tenant-a. The server copies listen on "::",
 * which takes both families, so the one registration serves IPv4 and IPv6 clients.
 * The demo checks what it shows: it exits non-zero if a client did not reach its
 * own instance, or an instance did not see the client's real address.
 */

import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VpmError } from '../base/errors.js';
import { packageRoot } from '../base/paths.js';
import { controlRequest } from '../control/client.js';
import { NetLab } from '../sandbox/netlab.js';
import { formatFlows } from '../view/format.js';
import type { FlowView } from '../view/views.js';

const VIP = '198.19.0.9';
const VIP6 = '2001:2:0:9::9';
const PORT = 9000;

/** "a.b.c.d:port" or "[v6]:port", as vpm and the demo's programs print them. */
const ep = (a: string, p: number) => (a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`);

interface ClientResult {
  ok: boolean;
  error?: string;
  greeting?: { instance: string; pid: number; sawClient: string; localPort: number };
  clientSaw?: { local: string; remote: string };
}

function demoConfig(socket: string): object {
  return {
    tun: { name: 'vpm0', address: '198.19.255.1', localClientAddress: '198.19.255.2' },
    // One service, an address of each family.
    services: [{ name: 'web', address: [VIP, VIP6], port: PORT, protocol: 'tcp' }],
    applications: [{ aid: 'tenant-a' }, { aid: 'tenant-b' }],
    pool: { range: '20000-20099', quarantineMs: 1000, waitTimeoutMs: 5000 },
    selectors: [
      { clients: ['198.18.1.0/24', '198.19.255.1/32'], aid: 'tenant-a' },
      { clients: ['198.18.2.0/24', '2001:2:0:2::/64'], aid: 'tenant-b' },
    ],
    default: { refuse: true },
    control: { socket },
    log: { level: 'info' },
  };
}

export type DemoErrorCode =
  /** The demo creates network namespaces: it needs root. */
  | 'ERR_PERMISSION'
  /** A program of the demo (vpm up, a server) exited or timed out before it was ready. */
  | 'ERR_DEMO_NOT_READY';

/** Why `vpm demo` could not run its walk-through (a failed check is a result, not an error). */
export class DemoError extends VpmError<DemoErrorCode> {
  readonly exitCode = 1;
}

/** The first stdout line of `p` (spawned by `lab`) for which `match` is true; throws on exit or timeout. */
async function waitForLine(
  lab: NetLab,
  p: ChildProcess,
  match: (line: string) => boolean,
  what: string,
  timeoutMs = 15_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { stdout, stderr } = lab.output(p);
    const line = stdout.split('\n').find(match);
    if (line !== undefined) return line;
    if (p.exitCode !== null || p.signalCode !== null) {
      throw new DemoError(
        'ERR_DEMO_NOT_READY',
        `${what} exited (${p.exitCode ?? p.signalCode}) before it was ready\n${stderr}`,
      );
    }
    if (Date.now() > deadline)
      throw new DemoError(
        'ERR_DEMO_NOT_READY',
        `${what}: not ready after ${timeoutMs} ms\n${stderr}`,
      );
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function runDemo(
  out: (s: string) => void = (s) => process.stdout.write(`${s}\n`),
): Promise<number> {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new DemoError(
      'ERR_PERMISSION',
      'vpm demo needs root (it creates network namespaces): run it as root',
    );
  }
  const t0 = Date.now();
  const root = packageRoot();
  const cli = join(root, 'dist', 'src', 'cli', 'main.js');
  const server = join(root, 'dist', 'src', 'demo', 'server.js');
  const client = join(root, 'dist', 'src', 'demo', 'client.js');
  const node = process.execPath;
  const sb = new NetLab('demo');
  const dir = sb.tempDir();
  let failures = 0;
  try {
    out(
      'vpm demo: two copies of one server program share port 9000 on one host; two tenants connect.',
    );
    out(`[1/6] building the sandbox: namespaces ${sb.id}-demo-{host,a,b}`);
    const host = sb.namespace('host');
    const ta = sb.namespace('a', { ipv6: false });
    const tb = sb.namespace('b');
    sb.veth(
      { ns: host, dev: 'to-a', cidr: '198.18.1.1/24' },
      { ns: ta, dev: 'eth0', cidr: '198.18.1.2/24' },
    );
    sb.veth(
      { ns: host, dev: 'to-b', cidr: '198.18.2.1/24' },
      { ns: tb, dev: 'eth0', cidr: '198.18.2.2/24' },
    );
    sb.run(ta, 'ip', ['route', 'add', 'default', 'via', '198.18.1.1']);
    sb.run(tb, 'ip', ['route', 'add', 'default', 'via', '198.18.2.1']);
    // Tenant B is dual-stack (nodad: no address is tentative when the demo connects).
    sb.run(host, 'ip', ['-6', 'addr', 'add', '2001:2:0:2::1/64', 'dev', 'to-b', 'nodad']);
    sb.run(tb, 'ip', ['-6', 'addr', 'add', '2001:2:0:2::2/64', 'dev', 'eth0', 'nodad']);
    sb.run(tb, 'ip', ['-6', 'route', 'add', 'default', 'via', '2001:2:0:2::1']);

    out(
      `[2/6] starting vpm in the host namespace: TUN vpm0, virtual service web = ${ep(VIP, PORT)} and ${ep(VIP6, PORT)}`,
    );
    const socket = join(dir, 'vpm0.sock');
    const cfgFile = join(dir, 'demo.json');
    writeFileSync(cfgFile, JSON.stringify(demoConfig(socket), null, 2));
    const daemon = sb.spawn(host, node, [cli, 'up', '-c', cfgFile]);
    await waitForLine(sb, daemon, (l) => l.includes('"event":"ready"'), 'vpm up');

    out('[3/6] starting two copies of the same server program, both on port 9000, under vpm exec:');
    const exec = (aid: string, name: string) =>
      sb.spawn(host, node, [
        cli,
        'exec',
        '--aid',
        aid,
        '-s',
        socket,
        '--',
        node,
        server,
        name,
        String(PORT),
      ]);
    const instA = exec('tenant-a', 'A');
    const instB = exec('tenant-b', 'B');
    for (const [inst, aid, name] of [
      [instA, 'tenant-a', 'A'],
      [instB, 'tenant-b', 'B'],
    ] as const) {
      const line = await waitForLine(sb, inst, (l) => l.includes('listening'), `copy ${name}`);
      const seen = (JSON.parse(line) as { port: number }).port;
      out(
        `      vpm exec --aid ${aid} -- node server.js ${name} ${PORT}   → the program says it listens on port ${seen}`,
      );
    }
    const registered = (await controlRequest(socket, 'instances')) as {
      aid: string;
      port: number;
    }[];
    // One row per family an instance serves (the copies bind "::": both): one port per AID.
    out(
      `      vpm gave them real ports ${[
        ...new Set(
          [...registered]
            .sort((a, b) => a.aid.localeCompare(b.aid))
            .map((i) => `${i.port} (${i.aid})`),
        ),
      ].join(' and ')}`,
    );

    out(
      `[4/6] connecting to ${ep(VIP, PORT)} from tenant A, tenant B and the host itself, and to ${ep(VIP6, PORT)} from tenant B`,
    );
    const connect = (ns: string, vip: string): ClientResult => {
      try {
        return JSON.parse(
          sb.run(ns, node, [client, vip, String(PORT)], { timeoutMs: 20_000 }),
        ) as ClientResult;
      } catch (e) {
        const stdout = (e as { stdout?: string }).stdout;
        return stdout
          ? (JSON.parse(stdout) as ClientResult)
          : { ok: false, error: (e as Error).message };
      }
    };
    const cases = [
      { who: 'tenant A', ns: ta, addr: '198.18.1.2', vip: VIP, want: 'A', seenAs: '198.18.1.2' },
      { who: 'tenant B', ns: tb, addr: '198.18.2.2', vip: VIP, want: 'B', seenAs: '198.18.2.2' },
      {
        who: 'tenant B over IPv6',
        ns: tb,
        addr: '2001:2:0:2::2',
        vip: VIP6,
        want: 'B',
        seenAs: '2001:2:0:2::2',
      },
      {
        who: 'a client on the vpm host',
        ns: host,
        addr: '198.19.255.1',
        vip: VIP,
        want: 'A',
        seenAs: '198.19.255.2',
      },
    ];

    out('[5/6] what happened:');
    for (const c of cases) {
      const r = connect(c.ns, c.vip);
      if (!r.ok || !r.greeting || !r.clientSaw) {
        failures++;
        out(`  ✘ ${c.who} (${c.addr}) could not connect: ${r.error}`);
        continue;
      }
      const g = r.greeting;
      const sawAddr = g.sawClient.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
      const right =
        g.instance === c.want && sawAddr === c.seenAs && r.clientSaw.remote === ep(c.vip, PORT);
      if (!right) failures++;
      out(
        `  ${right ? '✔' : '✘'} ${c.who} (${c.addr}) connected to ${r.clientSaw.remote} and was answered by copy ${g.instance} ` +
          `(pid ${g.pid}, real port ${g.localPort}), which saw the client as ${g.sawClient}` +
          (c.seenAs === c.addr
            ? ' — its real address'
            : ' — the local-client address vpm gives clients on its own host'),
      );
    }
    out(
      failures === 0
        ? '  Each tenant reached its own copy of the server on port 9000; the clients saw only port 9000; each copy saw the client address.'
        : `  ${failures} check(s) failed.`,
    );

    out('[6/6] the flow table (vpm flows):');
    const flows = (await controlRequest(socket, 'flows')) as FlowView[];
    for (const line of formatFlows(flows).split('\n')) out(`  ${line}`);
    const stats = (await controlRequest(socket, 'stats')) as {
      packetsIn: number;
      packetsOut: number;
      dropsTotal: number;
      drops: Record<string, number>;
    };
    const reasons = Object.entries(stats.drops)
      .filter(([, n]) => n > 0)
      .map(([r, n]) => `${r} ${n}`)
      .join(', ');
    out(
      `  packets in ${stats.packetsIn}, out ${stats.packetsOut}, dropped ${stats.dropsTotal}${reasons ? ` (${reasons})` : ''}`,
    );

    const exit = await sb.stop(daemon, 'SIGTERM', 5000);
    if (exit.code !== 0) {
      failures++;
      out(`  ✘ vpm exited with ${exit.code ?? exit.signal} on SIGTERM`);
    }
  } finally {
    out('removing the sandbox');
    await sb.cleanup();
  }
  out(`done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return failures === 0 ? 0 : 1;
}
