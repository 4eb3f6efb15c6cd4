/*
 * The README, run. Its commands and quoted outputs are taken from README.md
 * itself (not copied here), run in a sandbox of namespaces, and compared with
 * what the README says, so that the two cannot drift apart:
 *
 *   - every complete config in README.md and docs/*.md (a ```json block with
 *     "services") passes the config loader;
 *   - "Using vpm on a host": the config of step 1 and every command of steps 2-4,
 *     as written (`vpm up -c vpm.json` in the config's directory, `kill -HUP <pid>`
 *     with the daemon's pid), with two instances on 19001/19002: each tenant is
 *     answered by its AID's instance, each command exits 0, `vpm down` after a
 *     SIGKILL leaves the host as it was;
 *   - the ```console blocks: each prompt's command run where the prompt says
 *     (`tenant-a$`, `tenant-b$`: the tenants; `host#`, `$`: the vpm host), its
 *     output equal to the README's once the values that differ from run to run
 *     (timestamps, ephemeral ports, ages, sequence numbers, counts in the dump's
 *     summary) are replaced by placeholders on both sides;
 *   - the command table: every command and option it names exists in the CLI.
 *
 *     ns a 198.18.1.2 ══ ha 198.18.1.1 [ns host: vpm0 198.19.255.1] hb 198.18.2.1 ══ ns b 198.18.2.2
 *
 * The test's config is the README's plus two things the README leaves to the
 * reader: the control socket in the test's directory (not /run/vpm) and, for the
 * `curl .../metrics` line, the "metrics" field the README names next to it.
 */

import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import {
  CLIENT_A,
  CLIENT_B,
  runClient,
  startInstance,
  type Topology,
  TUN_ADDR,
  twoTenants,
} from '../integration/topology.js';
import { NetLab, requireCommands, requireRoot, waitFor } from '../support/netns.js';
import {
  type VpmDaemon as Daemon,
  hostState,
  REPO_ROOT,
  runVpm,
  VpmDaemon,
  type VpmFlow,
  vpmArgv,
  writeVpmConfig,
} from '../support/vpm.js';

const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');

interface Block {
  lang: string;
  text: string;
  /** The README's text from the last "## " heading above the block. */
  section: string;
}

/** The fenced code blocks of a Markdown text, with the section each is in. */
function blocks(md: string): Block[] {
  const out: Block[] = [];
  let section = '';
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^#{2,3} /.test(line)) section = line.replace(/^#+ /, '');
    const open = line.match(/^\s*```(\w*)\s*$/);
    if (!open) continue;
    const indent = line.match(/^\s*/)![0].length;
    const body: string[] = [];
    for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]!); i++)
      body.push(lines[i]!.slice(indent));
    out.push({ lang: open[1]!, text: body.join('\n'), section });
  }
  return out;
}

/** Complete configs: JSON blocks that parse as an object with "services". */
function configBlocks(md: string | Block[]): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const b of (typeof md === 'string' ? blocks(md) : md).filter((b) => b.lang === 'json')) {
    let v: unknown;
    try {
      v = JSON.parse(b.text);
    } catch {
      continue; // a fragment ("cooperative": {...}), not a whole file
    }
    if (v && typeof v === 'object' && 'services' in v) out.push(v as Record<string, unknown>);
  }
  return out;
}

/** A console block as (where, command, expected output lines). */
interface Step {
  where: string;
  cmd: string;
  expected: string[];
}

function consoleSteps(text: string): Step[] {
  const steps: Step[] = [];
  for (const line of text.split('\n')) {
    const m = line.match(/^([\w-]*)([$#]) (.*)$/);
    if (m) steps.push({ where: m[1] || 'host', cmd: m[3]!, expected: [] });
    else if (steps.length > 0) steps[steps.length - 1]!.expected.push(line);
  }
  return steps;
}

/** Replace what differs from run to run by placeholders; squeeze column padding. */
function normalize(line: string): string {
  let s = line
    .replace(/\b\d{2}:\d{2}:\d{2}\.\d{6}\b/g, 'TIME')
    .replace(/\b(seq|ack) \d+/g, '$1 N')
    .replace(/(\d+\.\d+\.\d+\.\d+):(\d{4,5})\b/g, (all, a: string, p: string) =>
      Number(p) >= 32768 ? `${a}:EPH` : all,
    )
    .replace(/\b\d+(\.\d+)?s\b/g, 'AGEs');
  // The dump's summary: how many packets the filter saw depends on the timing.
  // Whether more packets arrived after -c was met is a race the README cannot fix.
  if (/packets captured/.test(s))
    s = s
      .replace(/; \d+ more arrived after -c \d+ was met and were not read/, '')
      .replace(/\b\d+\b/g, 'N');
  // A TCP flow's packet and byte counts depend on ACK timing (delayed ACKs).
  if (/\btcp\b/.test(s)) s = s.replace(/\b\d+\/\d+\b/g, 'N/N');
  return s.replace(/\s+/g, ' ').trim();
}

/** A README command line as argv: no quotes, pipes or redirections in the lines run here. */
function argv(cmd: string): string[] {
  const bare = cmd.replace(/\s+#.*$/, '').trim();
  if (/["'|<>&;]/.test(bare.replace('<pid>', ''))) throw new Error(`not a plain command: ${cmd}`);
  return bare.split(/\s+/);
}

describe('README: every complete config in README.md and docs/ loads', () => {
  it('passes the config loader (the same as vpm check-config)', () => {
    const files = [
      join(REPO_ROOT, 'README.md'),
      ...readdirSync(join(REPO_ROOT, 'docs'))
        .filter((f) => f.endsWith('.md'))
        .map((f) => join(REPO_ROOT, 'docs', f)),
    ];
    let n = 0;
    for (const f of files) {
      for (const cfg of configBlocks(readFileSync(f, 'utf8'))) {
        expect(
          () => parseConfig(cfg, f),
          `${f}: ${JSON.stringify(cfg).slice(0, 80)}`,
        ).not.toThrow();
        n++;
      }
    }
    // The README alone has two (step 1 and the UDP services).
    expect(n).toBeGreaterThanOrEqual(2);
  });
});

describe('README: the commands table names what the CLI has', () => {
  it('every command and option in the table is in its --help', async () => {
    const lab = new NetLab('readmecli');
    try {
      const rows = README.split('\n').filter((l) => /^\| `vpm /.test(l));
      expect(rows.length).toBeGreaterThanOrEqual(10);
      const ns = lab.namespace('cli');
      for (const row of rows) {
        const usage = row.match(/^\| `vpm ([^`]+)`/)![1]!;
        const [sub, ...rest] = usage.split(' ');
        const help = await runVpm(lab, ns, [sub!, '--help']);
        expect(help.code, `vpm ${sub} --help: ${help.stderr}`).toBe(0);
        for (const opt of rest.join(' ').match(/--?[a-zA-Z][\w-]*/g) ?? [])
          expect(help.stdout, `vpm ${sub}: ${opt}`).toMatch(new RegExp(`(^|[\\s,])${opt}\\b`));
      }
    } finally {
      await lab.cleanup();
    }
  });
});

describe('README: "Using vpm on a host" and its console blocks, run in a sandbox', () => {
  let lab: NetLab;
  let topo: Topology;
  let dir: string;
  let config: string;
  let daemon: Daemon | null = null;
  const servers: ChildProcess[] = [];

  const section = (title: string) => blocks(README).filter((b) => b.section.startsWith(title));

  /** Run a README command in `ns`, in the config's directory. */
  const run = async (ns: string, cmd: string) => {
    const [prog, ...args] = argv(cmd);
    if (prog === 'vpm') return runVpm(lab, ns, args, 20_000, dir);
    const out = lab.run(ns, prog!, args);
    return { code: 0, signal: null, stdout: out, stderr: '', ms: 0 };
  };

  beforeAll(() => {
    requireRoot();
    requireCommands('ip', 'dig', 'dnsmasq', 'curl');
    lab = new NetLab('readme');
    topo = twoTenants(lab);
    dir = lab.tempDir();
    config = join(dir, 'vpm.json');
  });

  // One daemon per test: a failed test's daemon must not hold the TUN for the next.
  afterEach(async () => {
    await daemon?.stop();
    daemon = null;
  });

  afterAll(async () => {
    await lab?.cleanup();
  });

  it('steps 1-4: the config, check-config, up, the watch commands, HUP, then down after a crash', async () => {
    const before = hostState(lab, topo.host);
    const cfg = configBlocks(section('Using vpm on a host'))[0];
    expect(cfg, 'the config of step 1').toBeDefined();
    expect(writeVpmConfig(dir, { ...cfg, metrics: { listen: '127.0.0.1:9464' } })).toBe(config);
    const cmds = section('Using vpm on a host')
      .filter((b) => b.lang === 'sh')
      .flatMap((b) => b.text.split('\n'))
      .filter((l) => l.trim() !== '');
    expect(cmds.map((c) => argv(c).slice(0, 2).join(' '))).toEqual([
      'vpm check-config',
      'vpm up',
      'vpm flows',
      'vpm stats',
      'vpm instances',
      'curl 127.0.0.1:9464/metrics',
      'kill -HUP',
    ]);
    for (const cmd of cmds) {
      const a = argv(cmd);
      if (a[0] === 'vpm' && a[1] === 'up') {
        expect(a).toEqual(['vpm', 'up', '-c', 'vpm.json']);
        daemon = await VpmDaemon.startFile(lab, topo.host, config, dir, { cwd: dir });
        // "Start your server instances on their real ports (19001, 19002) on the TUN address"
        servers.push(await startInstance(lab, topo.host, 'tenant-a', 19001, TUN_ADDR));
        servers.push(await startInstance(lab, topo.host, 'tenant-b', 19002, TUN_ADDR));
        // "Clients connect to 198.19.0.9:9000; each is sent to the instance of its AID."
        for (const [ns, aid, addr] of [
          [topo.tenantA, 'tenant-a', CLIENT_A],
          [topo.tenantB, 'tenant-b', CLIENT_B],
        ] as const) {
          const r = await runClient(lab, ns, { mode: 'hello', host: '198.19.0.9', port: 9000 });
          expect(r.event, r.output).toBe('done');
          expect(r.hello).toMatchObject({ instance: aid, remoteAddress: addr });
        }
      } else if (a[0] === 'kill') {
        expect(a).toEqual(['kill', '-HUP', '<pid>']);
        process.kill(daemon!.pid, 'SIGHUP');
        await waitFor(() => daemon!.logs().some((l) => l.event === 'reloaded'), {
          what: 'the reload',
        });
      } else {
        const r = await run(topo.host, cmd);
        expect(r.code, `${cmd}: ${r.stderr}`).toBe(0);
        if (a[1] === 'flows') expect(r.stdout).toMatch(/tenant-a .*198\.19\.255\.1:19001/);
        if (a[0] === 'curl')
          expect(r.stdout).toMatch(/^vpm_packets_total\{direction="in"\} [1-9]/m);
      }
    }
    // Step 4: "... or `vpm down -c vpm.json`, which also cleans up after a daemon that was killed."
    expect(README).toContain(
      '`vpm down -c vpm.json`, which also cleans up after a daemon that was killed',
    );
    await daemon!.kill();
    daemon = null;
    const r = await run(topo.host, 'vpm down -c vpm.json');
    expect(r.code, r.stderr).toBe(0);
    expect(hostState(lab, topo.host)).toEqual(before);
  });

  it('the dump console block: the same lines, timestamps, ports and counts aside', async () => {
    const block = section('Watching the packets').find((b) => b.lang === 'console');
    expect(block, 'the dump console block').toBeDefined();
    const [step] = consoleSteps(block!.text).filter((s) => s.expected.length > 0);
    expect(step!.cmd).toBe('vpm dump --config vpm.json --pairs -c 4');
    writeVpmConfig(dir, configBlocks(section('Using vpm on a host'))[0]!);
    daemon = await VpmDaemon.startFile(lab, topo.host, config, dir, { cwd: dir });
    const dump = lab.spawn(
      topo.host,
      process.execPath,
      [...vpmArgv(), ...argv(step!.cmd).slice(1)],
      { cwd: dir },
    );
    // The dump says "listening on" on stderr once its capture is open.
    await lab.waitForOutput(dump, /listening on/, { stream: 'stderr', timeoutMs: 15_000 });
    // "with the config above and a client in 198.18.1.0/24"
    const c = await runClient(lab, topo.tenantA, { mode: 'hello', host: '198.19.0.9', port: 9000 });
    expect(c.event, c.output).toBe('done');
    const exit = await lab.exited(dump);
    expect(exit.code).toBe(0);
    const out = lab.output(dump);
    const got = `${out.stderr}\n${out.stdout}`
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map(normalize);
    expect(got.sort()).toEqual(step!.expected.map(normalize).sort());
  });

  it('the UDP services console block: dig from each tenant, then vpm flows on the host', async () => {
    const cfg = configBlocks(section('UDP services'))[0];
    expect(cfg, 'the UDP config').toBeDefined();
    writeVpmConfig(dir, cfg!);
    daemon = await VpmDaemon.startFile(lab, topo.host, config, dir, { cwd: dir });
    // "With a dnsmasq per tenant on the TUN address (ports 19053 and 19054)": the
    // answers are the ones the README's output shows.
    expect(README).toContain(
      'With a dnsmasq per tenant on the TUN address (ports 19053 and 19054)',
    );
    for (const [port, answer] of [
      [19053, '198.18.100.1'],
      [19054, '198.18.100.2'],
    ] as const) {
      const d = lab.spawn(topo.host, 'dnsmasq', [
        '--keep-in-foreground',
        '--conf-file=/dev/null',
        '--no-resolv',
        '--no-hosts',
        '--bind-interfaces',
        `--listen-address=${TUN_ADDR}`,
        `--port=${port}`,
        `--address=/who.example/${answer}`,
        '--log-facility=-',
        '--pid-file=',
        '--user=root',
      ]);
      await lab.waitForOutput(d, /started, version/, { stream: 'stderr', timeoutMs: 10_000 });
    }
    const block = section('UDP services').find((b) => b.lang === 'console');
    const steps = consoleSteps(block!.text);
    expect(steps.map((s) => s.where)).toEqual(['tenant-a', 'tenant-b', 'tenant-b', 'host']);
    const nsOf: Record<string, string> = {
      'tenant-a': topo.tenantA,
      'tenant-b': topo.tenantB,
      host: topo.host,
    };
    for (const s of steps) {
      if (s.cmd.startsWith('vpm flows')) {
        // The README shows the TCP flow in time_wait: list once dig's close is done.
        await waitFor(
          async () => (await daemon!.flows()).some((f: VpmFlow) => f.state === 'time_wait'),
          { what: 'the TCP flow in time_wait' },
        );
      }
      const r = await run(nsOf[s.where]!, s.cmd);
      expect(r.code, `${s.cmd}: ${r.stderr}`).toBe(0);
      const got = r.stdout.split('\n').filter((l) => l.trim() !== '');
      expect(got.map(normalize), s.cmd).toEqual(s.expected.map(normalize));
    }
  });
});

// Keep the normaliser honest: it hides only what varies.
describe('README doc test: normalize', () => {
  it('hides timestamps, ephemeral ports, ages and TCP counts, and nothing else', () => {
    expect(
      normalize(
        '1   udp    198.18.1.2:37566  dns 198.19.0.9:53  tenant-a  198.19.255.1:19053  udp_assured  0.6s  1/1  80/84',
      ),
    ).toBe(
      '1 udp 198.18.1.2:EPH dns 198.19.0.9:53 tenant-a 198.19.255.1:19053 udp_assured AGEs 1/1 80/84',
    );
    expect(normalize('198.18.100.1')).toBe('198.18.100.1');
    expect(normalize('198.18.1.2:9000 > 198.19.255.1:19001')).toBe(
      '198.18.1.2:9000 > 198.19.255.1:19001',
    );
    expect(normalize('3 tcp 198.18.2.2:33259 x time_wait 0.5s 6/4 374/274')).toBe(
      '3 tcp 198.18.2.2:EPH x time_wait AGEs N/N N/N',
    );
  });
});
