/*
 * Which of a previous daemon's flows continue under this daemon's config
 * (src/state/recover.ts): by the names of their service and AID, and the
 * address of their instance. Real configs through the real loader.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { rulesFromConfig, staticInstancesFromConfig } from '../../src/daemon/rules-from-config.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { FLOW_NEGOTIATED, FLOW_PEER, flowLayout } from '../../src/flow/layout.js';
import { type FlowKeyArgs, FlowTable } from '../../src/flow/table.js';
import { readFlowBytes } from '../../src/state/flow-file.js';
import { recoverFlows } from '../../src/state/recover.js';
import { parseIpv4 } from '../../src/wire/address.js';

const TIMEOUTS = [10_000, 100_000, 20_000, 5_000, 30_000, 120_000];
const ip = (t: string) => parseIpv4(t)!;
const TUN = ip('198.19.255.1');

const BASE = {
  services: [
    { name: 'web', address: '198.19.0.9', port: 9000 },
    { name: 'dns', protocol: 'udp', address: '198.19.0.9', port: 5300 },
  ],
  applications: [
    {
      aid: 'a',
      instances: [
        { port: 19001, service: 'web' },
        { port: 19101, service: 'dns' },
      ],
    },
    { aid: 'b', instances: [{ port: 19002, service: 'web' }] },
  ],
  default: { aid: 'a' },
};

function daemonOf(raw: unknown, capacity = 16, ipv6 = false) {
  const cfg = parseConfig(raw, 'test.json');
  const rules = rulesFromConfig(cfg);
  const instances = new InstanceSet();
  instances.replaceStatic(rules, staticInstancesFromConfig(cfg));
  const table = new FlowTable(capacity, TIMEOUTS, 3, capacity, ipv6);
  return { cfg, rules, instances, table };
}

const flow = (port: number, real: number, aid: number, svc: number, proto = 6): FlowKeyArgs => ({
  proto,
  clientAddr: ip('198.18.1.2'),
  clientPort: port,
  vipAddr: ip('198.19.0.9'),
  vport: proto === 17 ? 5300 : 9000,
  natAddr: ip('198.18.1.2'),
  natPort: port,
  realAddr: TUN,
  realPort: real,
  service: svc,
  aid,
  instance: 0,
});

/** The previous daemon: BASE's indexes, four flows (a web, b web, a dns, a negotiated web) and a peer flow. */
function previous() {
  const buf = new ArrayBuffer(flowLayout(16, false).bytes);
  const t = new FlowTable(16, TIMEOUTS, 3, 16, false, buf);
  t.create(flow(40001, 19001, 0, 0), 1000);
  t.create(flow(40002, 19002, 1, 0), 1001);
  t.create(flow(40003, 19101, 0, 1, 17), 1002);
  t.create({ ...flow(40004, 19001, 0, 0), vport: 40500, flags: FLOW_NEGOTIATED }, 1003);
  t.create({ ...flow(40005, 7000, 1, 0), realAddr: ip('198.19.0.99'), flags: FLOW_PEER }, 1004);
  return {
    read: readFlowBytes(new Uint8Array(buf)),
    names: { aids: ['a', 'b'], services: ['web', 'dns'] },
  };
}

describe('recoverFlows', () => {
  it('under the same config: every flow, with its indexes', () => {
    const { read, names } = previous();
    const d = daemonOf(BASE);
    const r = recoverFlows(read, { ...d, names, now: 5000 });
    expect(r).toEqual({ restored: 5, dropped: {} });
    const s = d.table.lookup(ip('198.18.1.2'), 40002, ip('198.19.0.9'), 9000, 6) >> 1;
    expect([d.table.aid[s], d.table.service[s]]).toEqual([1, 0]);
    expect(d.instances.get(d.table.instance[s]!)?.port).toBe(19002);
  });

  it('maps by name: applications and services in another order get their new indexes', () => {
    const { read, names } = previous();
    const d = daemonOf({
      ...BASE,
      services: [BASE.services[1], BASE.services[0]],
      applications: [BASE.applications[1], BASE.applications[0]],
    });
    expect(recoverFlows(read, { ...d, names, now: 5000 }).restored).toBe(5);
    const s = d.table.lookup(ip('198.18.1.2'), 40002, ip('198.19.0.9'), 9000, 6) >> 1;
    expect([d.table.aid[s], d.table.service[s]]).toEqual([0, 1]);
    const u = d.table.lookup(ip('198.18.1.2'), 40003, ip('198.19.0.9'), 5300, 17) >> 1;
    expect([d.table.aid[u], d.table.service[u]]).toEqual([1, 0]);
    expect(d.instances.get(d.table.instance[u]!)?.port).toBe(19101);
  });

  it('drops and counts what no longer exists: a service, an AID, an instance', () => {
    const { read, names } = previous();
    const noDns = daemonOf({
      ...BASE,
      services: [BASE.services[0]],
      applications: [{ aid: 'a', instances: [{ port: 19001 }] }, BASE.applications[1]],
    });
    expect(recoverFlows(read, { ...noDns, names, now: 5000 })).toEqual({
      restored: 4,
      dropped: { service_gone: 1 },
    });
    const noB = daemonOf({ ...BASE, applications: [BASE.applications[0]] });
    // b's own flow and b's peer flow.
    expect(recoverFlows(read, { ...noB, names, now: 5000 })).toEqual({
      restored: 3,
      dropped: { aid_gone: 2 },
    });
    const moved = daemonOf({
      ...BASE,
      applications: [BASE.applications[0], { aid: 'b', instances: [{ port: 19003 }] }],
    });
    // The peer flow of b has no local instance: it stays.
    expect(recoverFlows(read, { ...moved, names, now: 5000 })).toEqual({
      restored: 4,
      dropped: { instance_gone: 1 },
    });
    const otherPort = daemonOf({
      ...BASE,
      services: [{ name: 'web', address: '198.19.0.9', port: 9001 }, BASE.services[1]],
    });
    // web on another port: its three flows on 9000 are gone (a's, b's, b's peer flow); the
    // negotiated one (its vport is p2) needs only its VIP and protocol, and dns is untouched.
    expect(recoverFlows(read, { ...otherPort, names, now: 5000 })).toEqual({
      restored: 2,
      dropped: { service_gone: 3 },
    });
  });

  it('a smaller table takes what fits, the rest counted; times after now are taken as now', () => {
    const { read, names } = previous();
    const d = daemonOf(BASE, 3);
    expect(recoverFlows(read, { ...d, names, now: 1001.5 })).toEqual({
      restored: 3,
      dropped: { table_full: 2 },
    });
    d.table.forEach((s) => {
      expect(d.table.lastSeen[s]!).toBeLessThanOrEqual(1001.5);
    });
    // Ids go on after the old table's.
    const s = d.table.create(flow(41000, 19001, 0, 0), 2000);
    expect(d.table.id[s]).toBe(read.nextId);
  });

  it('without the journal names (an older journal), the indexes are taken as this config’s', () => {
    const { read } = previous();
    const d = daemonOf(BASE);
    expect(recoverFlows(read, { ...d, names: null, now: 5000 }).restored).toBe(5);
  });
});
