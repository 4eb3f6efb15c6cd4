/**
 * Running the TUN fixtures (test/tun/fixtures/) inside a NetLab namespace, and
 * reading the JSON lines they print.
 */

import type { ChildProcess } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { NetLab } from '../support/netns.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
export const LOADER = `${FIXTURES}ts-loader.mjs`;
export const TUN_FIXTURE = `${FIXTURES}tun-fixture.ts`;
export const HANDOVER_FIXTURE = `${FIXTURES}handover-fixture.ts`;
export const UDP_CLIENT = `${FIXTURES}udp-client.mjs`;

/** The fixture refuses to configure anything unless it runs in another netns than this one. */
export function fixtureEnv(): NodeJS.ProcessEnv {
  return { ...process.env, VPM_TEST_PARENT_NETNS: readlinkSync('/proc/self/ns/net') };
}

export interface FixtureOptions {
  /** Extra node flags, e.g. --expose-gc. */
  nodeFlags?: string[];
  /** Run as this uid/gid (setpriv), e.g. 65534 for nobody. */
  asUser?: number;
  stdin?: 'pipe' | 'ignore';
  /** The fixture script (default TUN_FIXTURE). */
  script?: string;
}

/** Start `tun-fixture.ts SCENARIO [JSON]` (or opts.script's) in `ns`; the pid is node's own. */
export function spawnTunFixture(
  lab: NetLab,
  ns: string,
  scenario: string,
  arg?: unknown,
  opts: FixtureOptions = {},
): ChildProcess {
  const nodeArgv = [
    process.execPath,
    ...(opts.nodeFlags ?? []),
    '--import',
    LOADER,
    opts.script ?? TUN_FIXTURE,
    scenario,
    ...(arg === undefined ? [] : [JSON.stringify(arg)]),
  ];
  const argv =
    opts.asUser === undefined
      ? nodeArgv
      : [`--reuid=${opts.asUser}`, `--regid=${opts.asUser}`, '--clear-groups', ...nodeArgv];
  return lab.spawn(
    ns,
    opts.asUser === undefined ? argv[0]! : 'setpriv',
    opts.asUser === undefined ? argv.slice(1) : argv,
    {
      stdin: opts.stdin ?? 'ignore',
      env: fixtureEnv(),
    },
  );
}

export type FixtureEvent = { event: string } & Record<string, unknown>;

/** Every JSON line a fixture has printed so far. */
export function events(lab: NetLab, child: ChildProcess): FixtureEvent[] {
  return lab
    .output(child)
    .stdout.split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as FixtureEvent);
}

/** Wait for the `nth` (default first) line with {"event": name} and return it. */
export async function waitEvent(
  lab: NetLab,
  child: ChildProcess,
  name: string,
  timeoutMs = 10_000,
  nth = 1,
): Promise<FixtureEvent> {
  const re = new RegExp(`(?:"event":"${name}"[^\\n]*\\n[^]*){${nth}}`);
  await lab.waitForOutput(child, re, { stream: 'stdout', timeoutMs });
  return events(lab, child).filter((e) => e.event === name)[nth - 1]!;
}
