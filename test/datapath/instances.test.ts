/**
 * The instance set: static instances (replaced on reload) and registered ones
 * (added and removed by the registry, kept across reloads), each with a stable
 * index, and the round-robin pick among those that serve a service.
 */

import { describe, expect, it } from 'vitest';
import { InstanceSet, type InstanceSpec } from '../../src/datapath/instances.js';
import { Rules } from '../../src/datapath/rules.js';
import { ip4, PROTO_TCP, PROTO_UDP } from '../support/builder.js';

const HOST = ip4('198.19.255.1');
const WEB = 0; // 198.19.0.9:9000
const ALT = 1; // 198.19.0.10:8080
const WEB_UDP = 2; // 198.19.0.9:9000, UDP

function rules(aids = ['a', 'b']): Rules {
  return new Rules({
    services: [
      { name: 'web', addr: ip4('198.19.0.9'), addr6: null, port: 9000, proto: PROTO_TCP, peer: -1 },
      {
        name: 'alt',
        addr: ip4('198.19.0.10'),
        addr6: null,
        port: 8080,
        proto: PROTO_TCP,
        peer: -1,
      },
      {
        name: 'web-udp',
        addr: ip4('198.19.0.9'),
        addr6: null,
        port: 9000,
        proto: PROTO_UDP,
        peer: -1,
      },
    ],
    selectors: [],
    aidNames: aids,
    defaultAid: 0,
  });
}

const inst = (aid: number, port: number, o: Partial<InstanceSpec> = {}): InstanceSpec => ({
  aid,
  addr: HOST,
  addr6: null,
  port,
  service: -1,
  vport: 0,
  ...o,
});

/** `n` picks for (aid, svc), as the ports they name (-1: none). */
function picks(set: InstanceSet, aid: number, svc: number, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const k = set.pick(aid, svc);
    out.push(k < 0 ? -1 : set.get(k)!.port);
  }
  return out;
}

describe('InstanceSet', () => {
  it('picks -1 when there is no instance: an empty set, an AID without any, an unknown AID', () => {
    const empty = new InstanceSet();
    expect(empty.pick(0, WEB)).toBe(-1);
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001)]);
    expect(set.pick(1, WEB)).toBe(-1);
    expect(set.pick(7, WEB)).toBe(-1);
    expect(set.serving(1, WEB)).toBe(false);
    expect(set.of(1)).toEqual([]);
  });

  it('holds static and registered instances, static ones first, each with its own index', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001), inst(1, 19002), inst(0, 19003)]);
    const r = set.addRegistered(inst(0, 20000, { vport: 9000 }));
    expect(set.of(0).map((i) => [i.index, i.source, i.port])).toEqual([
      [0, 'static', 19001],
      [2, 'static', 19003],
      [3, 'registered', 20000],
    ]);
    expect(r).toBe(3);
    expect(set.get(r)).toMatchObject({ aid: 0, addr: HOST, addr6: null, port: 20000, vport: 9000 });
    expect(set.all().map((i) => i.port)).toEqual([19001, 19002, 19003, 20000]);
    expect(Object.isFrozen(set.get(0))).toBe(true);
  });

  it('picks round robin among the instances that serve the service or its virtual port', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001), inst(0, 19002, { service: ALT })]);
    set.addRegistered(inst(0, 20000, { vport: 9000 }));
    set.addRegistered(inst(0, 20001, { vport: 8080 }));
    // web (9000): 19001 (any service) and 20000 (vport 9000), in turn.
    expect(picks(set, 0, WEB, 4)).toEqual([19001, 20000, 19001, 20000]);
    // One counter per AID, shared by its services: alt's turn goes on from web's.
    expect(picks(set, 0, ALT, 3)).toEqual([19002, 20001, 19001]);
    expect(set.serving(0, WEB)).toBe(true);
    set.replaceStatic(rules(), []);
    expect(picks(set, 0, ALT, 2)).toEqual([20001, 20001]);
    expect(picks(set, 0, WEB, 1)).toEqual([20000]);
  });

  it('a reload replaces the static instances and keeps the registered ones', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001), inst(1, 19002)]);
    const reg = set.addRegistered(inst(1, 20000, { vport: 9000 }));
    expect(reg).toBe(2);
    // The new file drops 19001, keeps 19002, adds 19005 for a new AID "c".
    set.replaceStatic(rules(['a', 'b', 'c']), [inst(1, 19002), inst(2, 19005)]);
    expect(set.of(0)).toEqual([]);
    expect(set.pick(0, WEB)).toBe(-1);
    expect(set.of(1).map((i) => [i.index, i.source, i.port])).toEqual([
      [1, 'static', 19002], // still configured the same way: same index
      [2, 'registered', 20000], // untouched by the reload
    ]);
    // 19001's index is freed after the new static instances got theirs (an index
    // should name no other instance soon after its own went away): the next one takes it.
    expect(set.of(2).map((i) => [i.index, i.port])).toEqual([[3, 19005]]);
    expect(set.get(0)).toBeUndefined();
    expect(set.addRegistered(inst(0, 20001))).toBe(0);
    expect(picks(set, 1, WEB, 3)).toEqual([19002, 20000, 19002]);
    expect(picks(set, 2, ALT, 1)).toEqual([19005]);
  });

  it('a static instance configured differently after a reload is a new instance', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001)]);
    set.replaceStatic(rules(), [inst(0, 19001, { service: ALT })]);
    expect(set.of(0).map((i) => [i.index, i.service])).toEqual([[1, ALT]]);
    expect(set.get(0)).toBeUndefined();
  });

  it('removes a registered instance: pick no longer names it, its index is handed out again, oldest freed first', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), []);
    const a = set.addRegistered(inst(0, 20000));
    const b = set.addRegistered(inst(0, 20001));
    const c = set.addRegistered(inst(0, 20002));
    set.removeRegistered(b);
    set.removeRegistered(a);
    expect(set.get(b)).toBeUndefined();
    expect(picks(set, 0, WEB, 2)).toEqual([20002, 20002]);
    expect(set.addRegistered(inst(0, 20003))).toBe(b);
    expect(set.addRegistered(inst(0, 20004))).toBe(a);
    expect(set.addRegistered(inst(0, 20005))).toBe(3);
    // Not registered, or gone already: nothing happens.
    set.removeRegistered(b);
    set.removeRegistered(b);
    set.removeRegistered(99);
    expect(set.of(0).map((i) => i.port)).toEqual([20002, 20004, 20005]);
    expect(c).toBe(2);
  });

  it('matches the protocol: a UDP instance of 9000 serves UDP 9000 only, a TCP one TCP only, a static one both', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(1, 19002)]);
    const tcp = set.addRegistered(inst(0, 20000, { vport: 9000, proto: PROTO_TCP }));
    const udp = set.addRegistered(inst(0, 20001, { vport: 9000, proto: PROTO_UDP }));
    expect(set.get(udp)).toMatchObject({ proto: PROTO_UDP, vport: 9000 });
    expect(set.get(0)).toMatchObject({ source: 'static', proto: 0 });
    expect(picks(set, 0, WEB, 3)).toEqual([20000, 20000, 20000]);
    expect(picks(set, 0, WEB_UDP, 3)).toEqual([20001, 20001, 20001]);
    expect(picks(set, 0, ALT, 1)).toEqual([-1]);
    // A static instance without a protocol serves both (a real port of the configuration).
    expect(picks(set, 1, WEB, 1)).toEqual([19002]);
    expect(picks(set, 1, WEB_UDP, 1)).toEqual([19002]);
    set.removeRegistered(udp);
    expect(set.serving(0, WEB_UDP)).toBe(false);
    expect(set.serving(0, WEB)).toBe(true);
    set.removeRegistered(tcp);
    set.addRegistered(inst(0, 20002, { vport: 9000, proto: PROTO_UDP }));
    expect(set.serving(0, WEB)).toBe(false);
    expect(picks(set, 0, WEB, 1)).toEqual([-1]);
    expect(picks(set, 0, WEB_UDP, 1)).toEqual([20002]);
  });

  it('a static instance configured with another protocol after a reload is a new instance', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001)]);
    set.replaceStatic(rules(), [inst(0, 19001)]);
    expect(set.of(0).map((i) => i.index)).toEqual([0]);
    set.replaceStatic(rules(), [inst(0, 19001, { proto: PROTO_UDP })]);
    expect(set.of(0).map((i) => [i.index, i.proto])).toEqual([[1, PROTO_UDP]]);
  });

  it('removeRegistered leaves static instances alone', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001)]);
    set.removeRegistered(0);
    expect(set.of(0).map((i) => i.port)).toEqual([19001]);
  });
});

describe('Rules', () => {
  it('is immutable: frozen copies of what it was built from', () => {
    const services = [
      { name: 'web', addr: ip4('198.19.0.9'), addr6: null, port: 9000, proto: PROTO_TCP, peer: -1 },
    ];
    const r = new Rules({ services, selectors: [], aidNames: ['a'], defaultAid: 0 });
    services[0]!.port = 1;
    expect(r.services[0]!.port).toBe(9000);
    expect(r.findService(ip4('198.19.0.9'), 9000, PROTO_TCP)).toBe(0);
    expect(Object.isFrozen(r)).toBe(true);
    expect(Object.isFrozen(r.services)).toBe(true);
    expect(Object.isFrozen(r.services[0])).toBe(true);
    expect(Object.isFrozen(r.aidNames)).toBe(true);
  });
});

describe('InstanceSet health (the passive check)', () => {
  const at = (set: InstanceSet, aid: number, svc: number, now: number, n: number) => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(set.get(set.pick(aid, svc, now))!.port);
    return out;
  };

  it('skips an instance marked down until its time is over, and counts its refusals', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001), inst(0, 19002), inst(0, 19003)]);
    expect(set.markDown(1, 2000, 1000)).toBe(true);
    expect(set.markDown(1, 2500, 1100)).toBe(false); // already down: pushed further
    expect(at(set, 0, WEB, 1200, 4)).toEqual([19001, 19003, 19001, 19003]);
    expect(set.health(1, 1200)).toEqual({ up: false, downUntil: 2500, refusals: 2 });
    expect(at(set, 0, WEB, 2500, 3).sort()).toEqual([19001, 19002, 19003]);
    expect(set.health(1, 2500)).toEqual({ up: true, downUntil: 0, refusals: 2 });
  });

  it('goes round robin over all when all are down', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001), inst(0, 19002)]);
    set.markDown(0, 5000, 0);
    set.markDown(1, 5000, 0);
    expect(at(set, 0, WEB, 100, 4)).toEqual([19001, 19002, 19001, 19002]);
  });

  it('picks a retry among those not tried: up ones first, else the one up soonest', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001), inst(0, 19002), inst(0, 19003), inst(1, 19004)]);
    const tried = Uint16Array.of(0, 0, 0, 0);
    expect(set.get(set.pickRetry(0, WEB, 0, tried, 0, 1))!.port).not.toBe(19001);
    set.markDown(1, 9000, 0);
    expect(set.get(set.pickRetry(0, WEB, 0, tried, 0, 1))!.port).toBe(19003);
    set.markDown(2, 8000, 0);
    // Both others down: the one whose down time ends first.
    expect(set.get(set.pickRetry(0, WEB, 0, tried, 0, 1))!.port).toBe(19003);
    tried[1] = 2;
    expect(set.get(set.pickRetry(0, WEB, 0, tried, 0, 2))!.port).toBe(19002);
    tried[2] = 1;
    expect(set.pickRetry(0, WEB, 0, tried, 0, 3)).toBe(-1); // never another AID's
  });

  it('marks up on an accepted connection; reports ran-out marks once; caps and clears on reload', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001), inst(0, 19002)]);
    set.markDown(0, 5000, 0);
    set.markDown(1, 5000, 0);
    expect(set.markUp(0)).toBe(true);
    expect(set.markUp(0)).toBe(false);
    expect(set.isDown(0, 10)).toBe(false);
    const ticked: number[] = [];
    set.healthTick(4999, (i) => ticked.push(i.port));
    expect(ticked).toEqual([]);
    set.capDown(1000);
    set.healthTick(1000, (i) => ticked.push(i.port));
    set.healthTick(2000, (i) => ticked.push(i.port));
    expect(ticked).toEqual([19002]);
    set.markDown(1, 5000, 2000);
    set.clearHealth();
    expect(set.isDown(1, 2000)).toBe(false);
  });

  it('keeps the health of an unchanged static instance across a reload; a new index starts up', () => {
    const set = new InstanceSet();
    const r = rules();
    set.replaceStatic(r, [inst(0, 19001), inst(0, 19002)]);
    set.markDown(1, 5000, 0);
    set.replaceStatic(r, [inst(0, 19002)]);
    expect(set.health(1, 0)).toEqual({ up: false, downUntil: 5000, refusals: 1 });
    set.replaceStatic(r, []);
    const k = set.addRegistered(inst(0, 20000));
    expect(set.health(k, 0)).toEqual({ up: true, downUntil: 0, refusals: 0 });
  });

  it('puts a registered instance at the index asked for when it is free (a restore), else the next', () => {
    const set = new InstanceSet();
    set.replaceStatic(rules(), [inst(0, 19001)]); // index 0
    // Index 5: the ones skipped (1-4) are free and handed out later, oldest first.
    expect(set.addRegistered(inst(0, 20000, { vport: 9000 }), 5)).toBe(5);
    expect(set.get(5)!.port).toBe(20000);
    expect(set.addRegistered(inst(0, 20001, { vport: 9000 }), 0)).toBe(1); // 0 is taken
    expect(set.addRegistered(inst(1, 20002, { vport: 9000 }), 3)).toBe(3);
    expect(set.addRegistered(inst(1, 20003, { vport: 9000 }))).toBe(2);
    expect(set.addRegistered(inst(1, 20004, { vport: 9000 }))).toBe(4);
    expect(set.addRegistered(inst(1, 20005, { vport: 9000 }))).toBe(6);
    // Far beyond the health columns' first size: they grow to hold it.
    const far = set.addRegistered(inst(1, 20006, { vport: 9000 }), 1000);
    expect(far).toBe(1000);
    expect(set.markDown(far, 50, 0)).toBe(true);
    expect(set.isDown(far, 10)).toBe(true);
    expect(set.addRegistered(inst(1, 20007, { vport: 9000 }))).toBe(7);
    expect(set.of(1).map((i) => i.port)).toEqual([20002, 20003, 20004, 20005, 20006, 20007]);
  });
});
