/**
 * Build the data plane's numeric `Rules`, its static instances and the host plan
 * from a validated Config.
 */

import type { Config } from '../config/types.js';
import type { InstanceSpec } from '../datapath/instances.js';
import type { HealthLimits, PipelineLimits } from '../datapath/pipeline.js';
import { Rules } from '../datapath/rules.js';
import type { HostPlan } from '../host/setup.js';
import { ipv4ToString } from '../wire/address.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../wire/ipv4.js';

export function rulesFromConfig(cfg: Config): Rules {
  return new Rules({
    services: cfg.services.map((s) => ({
      name: s.name,
      addr: s.address,
      port: s.port,
      proto: s.protocol === 'udp' ? IPPROTO_UDP : IPPROTO_TCP,
      peer: s.peer ?? -1,
    })),
    coopRange: cfg.cooperative?.listen ? cfg.cooperative.portRange : null,
    selectors: cfg.selectors.map((s) => ({
      service: s.serviceIndex ?? -1,
      cidrBase: Uint32Array.from((s.clients ?? []).map((c) => c.base)),
      cidrMask: Uint32Array.from((s.clients ?? []).map((c) => c.mask)),
      portLo: s.clientPorts?.lo ?? 0,
      portHi: s.clientPorts?.hi ?? 65535,
      aid: s.aidIndex,
    })),
    aidNames: cfg.applications.map((a) => a.aid),
    defaultAid: cfg.default.refuse ? -1 : cfg.default.aidIndex,
  });
}

/** The static instances (`applications[].instances`), in configuration order. */
export function staticInstancesFromConfig(cfg: Config): InstanceSpec[] {
  return cfg.applications.flatMap((a) =>
    a.instances.map((i) => ({
      aid: a.index,
      addr: i.address,
      port: i.port,
      service: i.serviceIndex ?? -1,
      vport: 0,
    })),
  );
}

/** Merge the instance ports into as few ranges as possible. */
export function replyPortRanges(cfg: Config): { lo: number; hi: number }[] {
  const ports = [...new Set(cfg.applications.flatMap((a) => a.instances.map((i) => i.port)))].sort(
    (a, b) => a - b,
  );
  const out: { lo: number; hi: number }[] = [];
  if (cfg.pool) out.push({ lo: cfg.pool.range.lo, hi: cfg.pool.range.hi });
  for (const p of ports) {
    const last = out[out.length - 1];
    if (last && last.hi + 1 === p) last.hi = p;
    else out.push({ lo: p, hi: p });
  }
  return out;
}

/** Merge ports into as few ranges as possible. */
function mergePorts(ports: readonly number[]): { lo: number; hi: number }[] {
  const out: { lo: number; hi: number }[] = [];
  for (const p of [...new Set(ports)].sort((a, b) => a - b)) {
    const last = out[out.length - 1];
    if (last && last.hi + 1 === p) last.hi = p;
    else out.push({ lo: p, hi: p });
  }
  return out;
}

/**
 * The static instances on a local address other than the TUN's (and not the
 * wildcard), by address in configuration order, with their ports merged into ranges.
 */
export function otherInstanceAddrs(
  cfg: Config,
): { addr: string; ports: { lo: number; hi: number }[] }[] {
  const byAddr = new Map<number, number[]>();
  for (const a of cfg.applications)
    for (const i of a.instances) {
      if (i.address === cfg.tun.address || i.address === 0) continue;
      const ports = byAddr.get(i.address) ?? [];
      ports.push(i.port);
      byAddr.set(i.address, ports);
    }
  return [...byAddr].map(([addr, ports]) => ({
    addr: ipv4ToString(addr),
    ports: mergePorts(ports),
  }));
}

export function hostPlanFromConfig(cfg: Config, tunName: string): HostPlan {
  return {
    tunName,
    tunAddr: ipv4ToString(cfg.tun.address),
    localClientAddr: ipv4ToString(cfg.tun.localClientAddress),
    mtu: cfg.tun.mtu,
    txQueueLen: cfg.tun.txQueueLen,
    vips: [...new Set(cfg.services.map((s) => ipv4ToString(s.address)))],
    replyPorts: replyPortRanges(cfg),
    replyProtocols: (['tcp', 'udp'] as const).filter((p) =>
      cfg.services.some((s) => s.protocol === p),
    ),
    otherInstanceAddrs: otherInstanceAddrs(cfg),
    routeTable: cfg.tun.routeTable,
    rulePriority: cfg.tun.rulePriority,
    peerVips: cfg.services
      .filter((s) => s.peer !== null)
      .map((s) => ({
        vip: ipv4ToString(s.address),
        peer: ipv4ToString(cfg.cooperative!.peers[s.peer!]!.address!),
      })),
  };
}

/** The flow table's timeouts, by timer class (src/flow/state.ts TimerClass). */
export function timerTimeouts(cfg: Config): number[] {
  const t = cfg.timeouts;
  return [
    t.embryonicMs,
    t.establishedIdleMs,
    t.closingMs,
    t.timeWaitMs,
    t.udpUnrepliedMs,
    t.udpAssuredMs,
  ];
}

/** The passive health check's settings. */
export function healthLimits(cfg: Config): HealthLimits {
  return { downMs: cfg.health.downMs, synCopies: cfg.health.synCopies };
}

/** The pipeline's fragment and ICMP limits. */
export function pipelineLimits(cfg: Config): PipelineLimits {
  return {
    heldFragments: cfg.limits.heldFragments,
    heldFragmentBytes: cfg.limits.heldFragmentBytes,
    fragmentMs: cfg.timeouts.fragmentMs,
    icmpPerSecond: cfg.limits.icmpPerSecond,
  };
}
