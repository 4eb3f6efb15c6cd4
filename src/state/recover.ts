/**
 * Taking over a previous daemon's flows: which of the records read back from
 * its state file (flow-file.ts) continue under this daemon's configuration.
 *
 * Theory of operation. A record names its service, AID and instance by index
 * into the configuration of the daemon that wrote it; the names of those
 * indexes were journalled beside it (the host journal's `names`, written at
 * start and on every reload). A flow continues exactly when what it was
 * translated by still exists, by name and by address:
 *   - its service: the service of that name, with the same protocol, the
 *     flow's VIP among its addresses, and its port the flow's virtual port
 *     (a cooperative flow's server side has the negotiated p2 there instead,
 *     FLOW_NEGOTIATED, and only the VIP and protocol are compared);
 *   - its AID: the application of that name;
 *   - its instance: an instance of that AID listening on the flow's real
 *     address and port (static, or registered by a program under vpm exec and
 *     taken over from the registry's state before the flows are); the client
 *     side of a cooperative flow (FLOW_PEER) has a peer's VIP:p2 there and no
 *     local instance, and keeps its translation as long as its service and AID
 *     exist;
 *   - its family: an IPv6 flow needs a table with IPv6 (tun.ipv6).
 * The indexes are rewritten to this configuration's. Every other flow is
 * dropped and counted by reason; so is one that no longer fits in the table
 * (a smaller limits.maxFlows) or collides with one taken already. Times are
 * CLOCK_MONOTONIC (base/clock.ts), the same in both processes: a last-seen
 * time after `now` (which a sound record cannot have) is taken as `now`.
 */

import type { InstanceSet } from '../datapath/instances.js';
import type { Rules, ServiceRuleOf } from '../datapath/rules.js';
import { FLOW_NEGOTIATED, FLOW_PEER } from '../flow/layout.js';
import { CREATE_FULL, type FlowKeyArgs, type FlowTable } from '../flow/table.js';
import type { FlowFileRead, RecoveredFlow } from './flow-file.js';

/** The names of the indexes a previous daemon's records use. */
export interface IndexNames {
  aids: string[];
  services: string[];
}

export type DropReason =
  | 'service_gone'
  | 'aid_gone'
  | 'instance_gone'
  | 'family_off'
  | 'table_full'
  | 'duplicate';

export interface RecoveryResult {
  restored: number;
  dropped: Partial<Record<DropReason, number>>;
  /** Of the restored: cooperative server-side flows whose p2 was claimed again (the daemon fills it in). */
  p2?: number;
}

export interface RecoveryContext {
  table: FlowTable;
  rules: Rules;
  instances: InstanceSet;
  /** The names of the old indexes; null (an old journal): the indexes are taken as this config's. */
  names: IndexNames | null;
  now: number;
}

function vipOf(svc: ServiceRuleOf, f: RecoveredFlow): boolean {
  if (f.family === 6) {
    const a = svc.addr6;
    const w = f.addr6!;
    return a !== null && a[0] === w[4] && a[1] === w[5] && a[2] === w[6] && a[3] === w[7];
  }
  return svc.addr === f.vipAddr;
}

/** Restore the flows of `read` that continue (see the top of the file) into ctx.table. */
export function recoverFlows(read: FlowFileRead, ctx: RecoveryContext): RecoveryResult {
  const { table, rules, instances, names } = ctx;
  const dropped: Partial<Record<DropReason, number>> = {};
  const drop = (r: DropReason) => {
    dropped[r] = (dropped[r] ?? 0) + 1;
  };
  const byName = <T extends { name: string }>(list: readonly T[]) =>
    new Map(list.map((x, i) => [x.name, i] as const));
  const serviceIndex = byName(rules.services);
  const aidIndex = new Map(rules.aidNames.map((n, i) => [n, i] as const));
  let restored = 0;
  for (const f of read.flows) {
    if (f.family === 6 && !table.ipv6) {
      drop('family_off');
      continue;
    }
    const svcName = names ? names.services[f.service] : rules.services[f.service]?.name;
    const svc = svcName === undefined ? undefined : serviceIndex.get(svcName);
    const rule = svc === undefined ? undefined : rules.services[svc];
    if (
      svc === undefined ||
      rule === undefined ||
      rule.proto !== f.proto ||
      !vipOf(rule, f) ||
      ((f.flags & FLOW_NEGOTIATED) === 0 && rule.port !== f.vport)
    ) {
      drop('service_gone');
      continue;
    }
    const aidName = names ? names.aids[f.aid] : rules.aidNames[f.aid];
    const aid = aidName === undefined ? undefined : aidIndex.get(aidName);
    if (aid === undefined) {
      drop('aid_gone');
      continue;
    }
    let instance = 0;
    if ((f.flags & FLOW_PEER) === 0) {
      const i =
        f.family === 6
          ? instances.byAddress6(f.addr6!.subarray(12, 16), f.realPort)
          : instances.byAddress(f.realAddr, f.realPort);
      if (i === undefined || i.aid !== aid) {
        drop('instance_gone');
        continue;
      }
      instance = i.index;
    }
    const k: FlowKeyArgs = {
      family: f.family,
      proto: f.proto,
      clientAddr: f.clientAddr,
      clientPort: f.clientPort,
      vipAddr: f.vipAddr,
      vport: f.vport,
      natAddr: f.natAddr,
      natPort: f.natPort,
      realAddr: f.realAddr,
      realPort: f.realPort,
      service: svc,
      aid,
      instance,
      flags: f.flags,
    };
    if (f.addr6) k.addr6 = f.addr6;
    const s = table.restoreFlow(k, {
      state: f.state,
      fins: f.fins,
      id: f.id,
      created: Math.min(f.created, ctx.now),
      lastSeen: Math.min(f.lastSeen, ctx.now),
      pktsIn: f.pktsIn,
      bytesIn: f.bytesIn,
      pktsOut: f.pktsOut,
      bytesOut: f.bytesOut,
    });
    if (s < 0) {
      drop(s === CREATE_FULL ? 'table_full' : 'duplicate');
      continue;
    }
    restored++;
  }
  table.reserveIds(read.nextId);
  return { restored, dropped };
}
