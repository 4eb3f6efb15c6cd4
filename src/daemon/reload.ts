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

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

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
