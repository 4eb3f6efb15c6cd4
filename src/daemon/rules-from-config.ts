/**
 * Build the data plane's numeric `Rules`, its static instances and the host plan
 * from a validated Config. IPv4 addresses stay u32 numbers (-1 where a service or
 * instance has none); IPv6 ones become four big-endian u32 words (the contract of
 * src/wire/address.ts `ipv6ToWords`), made once here, never per packet.
 */

import type { Config } from '../config/types.js';
import type { InstanceSpec } from '../datapath/instances.js';
import type { HealthLimits, PipelineLimits } from '../datapath/pipeline.js';
import { Rules } from '../datapath/rules.js';
import type { HostPlan } from '../host/setup.js';
import {
  formatAddr,
  formatIpv6,
  type IpAddr,
  ipv4ToString,
  ipv6ToWords,
  ipv6Words,
} from '../wire/address.js';
import { IPPROTO_TCP, IPPROTO_UDP } from '../wire/ipv4.js';

/** The netmask of an IPv6 prefix length as a 128-bit value. */
function mask6(prefix: number): bigint {
  return prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(128 - prefix);
}

/** IPv6 CIDRs as 8 words each: base w0..w3, then mask w0..w3. */
export function cidr6Words(cidrs: readonly { base: bigint; prefix: number }[]): Uint32Array {
  const out = new Uint32Array(8 * cidrs.length);
  cidrs.forEach((c, i) => {
    ipv6ToWords(c.base, out, 8 * i);
    ipv6ToWords(mask6(c.prefix), out, 8 * i + 4);
  });
  return out;
}

export function rulesFromConfig(cfg: Config): Rules {
  return new Rules({
    services: cfg.services.map((s) => ({
      name: s.name,
      addr: s.address ?? -1,
      addr6: s.address6 === null ? null : ipv6Words(s.address6),
      port: s.port,
      proto: s.protocol === 'udp' ? IPPROTO_UDP : IPPROTO_TCP,
      peer: s.peer ?? -1,
    })),
    coopRange: cfg.cooperative?.listen ? cfg.cooperative.portRange : null,
    selectors: cfg.selectors.map((s) => ({
      service: s.serviceIndex ?? -1,
      cidrBase: Uint32Array.from((s.clients ?? []).map((c) => c.base)),
      cidrMask: Uint32Array.from((s.clients ?? []).map((c) => c.mask)),
      cidr6Words: cidr6Words(s.clients6 ?? []),
      anyClient: s.clients === null && s.clients6 === null,
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
      addr: i.address ?? -1,
      addr6: i.address6 === null ? null : ipv6Words(i.address6),
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
 * wildcard), by address in configuration order, with their ports merged into
 * ranges; IPv4 ones, or with `family` 6 the IPv6 ones (RFC 5952 text).
 */
export function otherInstanceAddrs(
  cfg: Config,
  family: 4 | 6 = 4,
): { addr: string; ports: { lo: number; hi: number }[] }[] {
  const byAddr = new Map<number | bigint, number[]>();
  for (const a of cfg.applications)
    for (const i of a.instances) {
      const addr = family === 4 ? i.address : i.address6;
      const tun = family === 4 ? cfg.tun.address : cfg.tun.address6;
      if (addr === null || addr === tun || addr === 0 || addr === 0n) continue;
      const ports = byAddr.get(addr) ?? [];
      ports.push(i.port);
      byAddr.set(addr, ports);
    }
  return [...byAddr].map(([addr, ports]) => ({
    addr: typeof addr === 'bigint' ? formatIpv6(addr) : ipv4ToString(addr),
    ports: mergePorts(ports),
  }));
}

/** The IPv6 part of the host plan, or null when the config does not use IPv6. */
/**
 * Cooperative client side: the VIPs of `family` of the services a peer serves,
 * each with the address whose route it takes: its peer's, when the peer's
 * address is of the same family (the VIP lives on the peer's host), else the
 * VIP's own (the host's way to it, looked up before vpm routes it to the TUN).
 */
function peerVips(cfg: Config, family: 4 | 6): { vip: string; peer: string }[] {
  const out: { vip: string; peer: string }[] = [];
  const seen = new Set<string>();
  for (const s of cfg.services) {
    if (s.peer === null) continue;
    const vip: IpAddr | null = family === 6 ? s.address6 : s.address;
    const peerAddr = cfg.cooperative?.peers[s.peer]?.address ?? null;
    if (vip === null || peerAddr === null) continue;
    const sameFamily = (typeof peerAddr === 'bigint') === (family === 6);
    const entry = { vip: formatAddr(vip), peer: formatAddr(sameFamily ? peerAddr : vip) };
    if (seen.has(entry.vip)) continue;
    seen.add(entry.vip);
    out.push(entry);
  }
  return out;
}

function hostPlan6(cfg: Config): HostPlan['ipv6'] {
  if (!cfg.tun.ipv6) return null;
  const vips: string[] = [];
  for (const s of cfg.services) if (s.address6 !== null) vips.push(formatIpv6(s.address6));
  return {
    tunAddr: formatIpv6(cfg.tun.address6),
    localClientAddr: formatIpv6(cfg.tun.localClientAddress6),
    vips: [...new Set(vips)],
    otherInstanceAddrs: otherInstanceAddrs(cfg, 6),
    peerVips: peerVips(cfg, 6),
  };
}

export function hostPlanFromConfig(cfg: Config, tunName: string): HostPlan {
  return {
    tunName,
    tunAddr: ipv4ToString(cfg.tun.address),
    localClientAddr: ipv4ToString(cfg.tun.localClientAddress),
    mtu: cfg.tun.mtu,
    txQueueLen: cfg.tun.txQueueLen,
    vips: [
      ...new Set(
        cfg.services.flatMap((s) => (s.address === null ? [] : [ipv4ToString(s.address)])),
      ),
    ],
    replyPorts: replyPortRanges(cfg),
    replyProtocols: (['tcp', 'udp'] as const).filter((p) =>
      cfg.services.some((s) => s.protocol === p),
    ),
    otherInstanceAddrs: otherInstanceAddrs(cfg),
    routeTable: cfg.tun.routeTable,
    rulePriority: cfg.tun.rulePriority,
    peerVips: peerVips(cfg, 4),
    ipv6: hostPlan6(cfg),
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
