/**
 * What a reload changes: a pure function of the running configuration and the
 * one just read, so it can be tested without a daemon.
 *
 * A few settings are read once, at start-up: the TUN device (its name, addresses,
 * MTU, offloads, routing table and rule priority), the control socket, the size of
 * the translation table and its embryonic share, of the fragment wait buffer and of the SYN copies
 * (health.synCopies), the port pool and the cooperative set-up (but the peers'
 * keys, live for a key rollover). When a reload
 * finds them changed it says so (`reload_partial`, `needsRestart`) and the daemon
 * keeps running with the old ones. Everything else is applied live: services,
 * applications, selectors and the default for new connections, timeouts for every
 * flow's next timer, the ICMP rate limit, health.downMs; the daemon's Daemon.reload applies them.
 */

import type { Config } from '../config/types.js';

/** Settings that take effect only after a restart, in the order they are reported. */
export const RESTART_SETTINGS = [
  'tun',
  'control.socket',
  'control.group',
  'control.monitorGroup',
  'limits.maxFlows',
  'limits.embryonicFlows',
  'limits.heldFragments',
  'limits.heldFragmentBytes',
  'health.synCopies',
  'pool',
  'cooperative',
] as const;
export type RestartSetting = (typeof RESTART_SETTINGS)[number];

/** Settings a reload applies live (compared to report what changed). */
export const LIVE_SETTINGS = [
  'services',
  'applications',
  'selectors',
  'default',
  'timeouts',
  'limits.icmpPerSecond',
  'health.downMs',
  'cooperative.peers[].keys',
] as const;
export type LiveSetting = (typeof LIVE_SETTINGS)[number];

const RESTART_VALUE: Record<RestartSetting, (c: Config) => unknown> = {
  tun: (c) => c.tun,
  'control.socket': (c) => c.control.socket,
  'control.group': (c) => c.control.group,
  'control.monitorGroup': (c) => c.control.monitorGroup,
  'limits.maxFlows': (c) => c.limits.maxFlows,
  'limits.embryonicFlows': (c) => c.limits.embryonicFlows,
  'limits.heldFragments': (c) => c.limits.heldFragments,
  'limits.heldFragmentBytes': (c) => c.limits.heldFragmentBytes,
  'health.synCopies': (c) => c.health.synCopies,
  pool: (c) => c.pool,
  // The peers' keys are applied live (a rollover): compared without them.
  cooperative: (c) =>
    c.cooperative && {
      ...c.cooperative,
      peers: c.cooperative.peers.map(({ key: _k, keys: _ks, ...p }) => p),
    },
};

export interface ReloadPlan {
  /** Restart-only settings whose value in the new file differs (they are not applied). */
  needsRestart: RestartSetting[];
  /** Live settings whose value differs (applied to new connections). */
  changed: LiveSetting[];
  /**
   * The configuration the daemon runs with from now on: the new one, with the
   * restart-only sections (`tun`, `control`, `limits` but its ICMP rate, `pool`,
   * `cooperative` but its peers' keys, `health.synCopies`) kept from the running one.
   */
  config: Config;
}

/** The answer to a reload (control command `reload`). */
export interface ReloadResult {
  ok: true;
  services: number;
  applications: number;
  selectors: number;
}

const LIVE_VALUE: Record<LiveSetting, (c: Config) => unknown> = {
  services: (c) => c.services,
  applications: (c) => c.applications,
  selectors: (c) => c.selectors,
  default: (c) => c.default,
  timeouts: (c) => c.timeouts,
  'limits.icmpPerSecond': (c) => c.limits.icmpPerSecond,
  'health.downMs': (c) => c.health.downMs,
  'cooperative.peers[].keys': (c) => c.cooperative?.peers.map((p) => [p.name, p.keys]) ?? null,
};

/** `current`, with each peer's keys from the peer of the same name in `next` (a rollover is live). */
function withKeysOf(
  current: Config['cooperative'],
  next: Config['cooperative'],
): Config['cooperative'] {
  if (!current || !next) return current;
  const byName = new Map(next.peers.map((p) => [p.name, p]));
  return {
    ...current,
    peers: current.peers.map((p) => {
      const n = byName.get(p.name);
      return n ? { ...p, key: n.key, keys: n.keys } : p;
    }),
  };
}

/** JSON with IPv6 addresses (bigints) as text: JSON.stringify refuses bigints. */
const json = (v: unknown) =>
  JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x));
const same = (a: unknown, b: unknown) => json(a) === json(b);

/** A field of `c` that uses IPv6 (what turns tun.ipv6 on), for messages. */
function ipv6Field(c: Config): string {
  const s = c.services.findIndex((x) => x.address6 !== null);
  if (s >= 0) return `services[${s}].address`;
  for (const a of c.applications) {
    const j = a.instances.findIndex((i) => i.address === null);
    if (j >= 0) return `applications[${a.index}].instances[${j}].address`;
  }
  const sel = c.selectors.findIndex((x) => (x.clients6?.length ?? 0) > 0);
  if (sel >= 0) return `selectors[${sel}].clients`;
  if (typeof c.cooperative?.listen?.address === 'bigint') return 'cooperative.listen';
  const p = c.cooperative?.peers.findIndex((x) => typeof x.address === 'bigint') ?? -1;
  if (p >= 0) return `cooperative.peers[${p}].address`;
  return 'tun.address6';
}

/**
 * Why a reload from `current` to `next` is refused, or null: IPv6 is set up at
 * start-up only (the TUN's IPv6 address, routes and rules, the flow table's IPv6
 * columns), so a file that turns it on or off needs a restart. Unlike the other
 * restart-only settings, the rest of such a file cannot be applied without it:
 * its IPv6 services would have no route, or the running ones would lose theirs.
 */
export function ipv6ReloadProblem(
  current: Config,
  next: Config,
): { path: string; message: string } | null {
  if (next.tun.ipv6 === current.tun.ipv6) return null;
  const path = ipv6Field(next.tun.ipv6 ? next : current);
  return next.tun.ipv6
    ? {
        path,
        message: `uses IPv6, which the running daemon does not (tun.ipv6 is decided at start-up): restart vpm to turn IPv6 on; the reload is refused and the old configuration stays`,
      }
    : {
        path: 'tun.ipv6',
        message: `the running daemon uses IPv6 (${path} of its configuration) and this file uses none: restart vpm to turn IPv6 off; the reload is refused and the old configuration stays`,
      };
}

export function reloadPlan(current: Config, next: Config): ReloadPlan {
  return {
    needsRestart: RESTART_SETTINGS.filter(
      (k) => !same(RESTART_VALUE[k](next), RESTART_VALUE[k](current)),
    ),
    changed: LIVE_SETTINGS.filter(
      (k) =>
        !same(LIVE_VALUE[k](next), LIVE_VALUE[k](current)) &&
        // Keys change live only between two cooperative set-ups (otherwise: `cooperative`).
        (k !== 'cooperative.peers[].keys' ||
          (current.cooperative !== null && next.cooperative !== null)),
    ),
    config: {
      ...next,
      cooperative: withKeysOf(current.cooperative, next.cooperative),
      tun: current.tun,
      control: current.control,
      limits: { ...current.limits, icmpPerSecond: next.limits.icmpPerSecond },
      pool: current.pool,
      health: { ...next.health, synCopies: current.health.synCopies },
    },
  };
}
