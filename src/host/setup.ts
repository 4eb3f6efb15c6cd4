/**
 * Host network set-up for `vpm up`, and its exact undo.
 *
 * Theory of operation. The TUN device is persistent (TUNSETPERSIST): it, its
 * addresses and its routes outlive the daemon's file descriptor, so that a
 * crash, `kill -9`, the OOM killer or a `--keep-state` stop leaves every
 * connection's path in place for the next daemon (crash survival,
 * docs/deployment.md). Every host change is appended to a journal (a JSON state
 * file, written before the change is made, so a crash between the two leaves at
 * worst an undo of something absent, which is harmless):
 *   - the TUN device itself (`link`, first: created last, removed last),
 *   - the policy rules that steer replies from instance ports into the TUN, and
 *     the peer routes of table T+1,
 *   - the global net.ipv4.ip_forward sysctl (and IPv6's all.forwarding), and
 *     what the kernel changes with it (all.accept_redirects, default.forwarding,
 *     every other device's forwarding).
 * Changes that were already in place (a rule that exists, a sysctl that
 * already has the value) are not journalled and not undone: vpm removes exactly
 * what it added. The TUN's own settings (its sysctls, address, routes) are not
 * journalled: they go with the device.
 *
 * What the next start does with a dead daemon's journal:
 *   - it names the persistent TUN and the device exists (`adoptableJournal`):
 *     the new daemon takes the journal over as its own (HostSetup with
 *     `adopted`): it changes nothing before the TUN is reading again, then
 *     applies its plan over what is there — existing rules and sysctls are
 *     found in place and not journalled twice — and ends by removing what the
 *     old state has and its plan does not (`reconcile`: rules, peer routes, the
 *     TUN's addresses and routes). A failed start leaves that state as it was;
 *   - anything else (an older journal without the TUN, the device deleted
 *     meanwhile): `cleanStale` undoes it first, as before.
 * `vpm down` (and SIGTERM/SIGINT without --keep-state) undoes the journal
 * newest first, the TUN last (`ip link delete`), and removes the state files.
 *
 * Commands run asynchronously (run.ts, and /proc/sys through node:fs/promises):
 * the daemon's event loop, which also reads and writes the TUN device, keeps
 * moving packets while `ip` runs — at start-up, on reload (`updateReplyPorts`)
 * and at exit. One operation at a time: `apply`, `updateReplyPorts` and `undo`
 * queue behind each other, so that two reloads never interleave their edits of
 * the journal and an undo at exit waits for a reload's update and removes what
 * it added too. The journal itself is written synchronously, before the change it
 * records: a small file, no process, and its order before the change is plain.
 * On reload the new reply rules are added before the old ones are removed, so a
 * port that both cover (19002 in 19001-19002 and in 19001-19003) is never without
 * one: the replies of a running flow never miss the TUN.
 *
 * The recipe, for a TUN `vpm0` with address A, local-client address L, virtual
 * service addresses V…, instance ports P…, route table T and rule priority R:
 *   ip link set vpm0 mtu M txqueuelen Q; sysctl net.ipv6.conf.vpm0.disable_ipv6=1
 *   sysctl net.ipv4.conf.vpm0.{rp_filter=2, forwarding=1, accept_local=1}
 *   ip addr add A/32 dev vpm0; ip link set vpm0 up
 *   ip route add V/32 dev vpm0 (each); ip route add L/32 dev vpm0
 *   ip route add default dev vpm0 table T
 *   ip rule add pref R from A ipproto tcp lookup T (when a service is TCP)
 *   ip rule add pref R from A ipproto udp lookup T (when a service is UDP), and
 *   ip rule add pref R iif lo ipproto udp sport P lookup T (each port range)
 *   ip rule add pref R from X ipproto tcp sport P lookup T (each instance address
 *     X other than A, each port range of its instances; when a service is TCP)
 *   ip rule add pref R from A ipproto icmp iif lo lookup T
 *   sysctl net.ipv4.ip_forward=1, after journalling what the kernel changes with
 *   it: conf.all.accept_redirects, conf.default.forwarding, conf.<dev>.forwarding
 *   of every device (see setIpForward)
 *
 * With IPv6 (plan.ipv6: the config has an IPv6 address somewhere), the TUN keeps
 * IPv6 on and gets the same recipe in `ip -6` form, with A6, L6, V6… its IPv6
 * addresses, the same table T, priority R and ports P:
 *   sysctl net.ipv6.conf.vpm0.{disable_ipv6=0, accept_dad=0, dad_transmits=0,
 *     router_solicitations=0, accept_ra=0, autoconf=0, addr_gen_mode=1}, before
 *     the link goes up: no duplicate address detection (A6 is vpm's own, on a
 *     point-to-point device with no neighbours), no router solicitations, router
 *     advertisements or SLAAC, no link-local address
 *   forwarding, for clients' packets into the TUN and what vpm writes into it
 *   towards clients elsewhere: net.ipv6.conf.all.forwarding=1 with its side
 *   effects journalled first (see setIpv6Forward), then
 *   net.ipv6.conf.vpm0.forwarding=0, all before the link goes up and after
 *   `ip link set vpm0 multicast off`: a forwarding device with multicast joins
 *   the all-routers groups, which the kernel reports by MLD on it; without
 *   multicast it joins none (a TUN is NOARP: no solicited-node groups either),
 *   so none of the kernel's own chatter reaches vpm on its TUN. (On a host whose
 *   IPv6 forwarding is on before vpm starts, the TUN is in ff02::2 from its
 *   creation, and the kernel reports that twice when it comes up.)
 *   ip -6 addr add A6/128 dev vpm0 nodad
 *   ip -6 route add V6/128 dev vpm0 (each); ip -6 route add L6/128 dev vpm0
 *   ip -6 route add default dev vpm0 table T
 *   ip -6 rule add pref R from A6 ipproto tcp|udp lookup T (per service protocol),
 *   ip -6 rule add pref R iif lo ipproto udp sport P lookup T (each port range),
 *   ip -6 rule add pref R from X6 ipproto tcp sport P lookup T (other addresses),
 *   ip -6 rule add pref R from A6 ipproto ipv6-icmp iif lo lookup T
 * The routes die with the TUN, as the IPv4 ones do; the rules are journalled
 * (with `family: 6`) and undone like the IPv4 ones.
 */

import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { netnsLink } from '../base/netns.js';
import { procStart, procStat, sameProcess } from '../base/proc.js';
import { HostError, run } from './run.js';
import { readSysctl, writeSysctl } from './sysctl.js';

export interface HostPlan {
  tunName: string;
  tunAddr: string;
  localClientAddr: string;
  mtu: number;
  txQueueLen: number;
  vips: readonly string[];
  /** Source-port ranges of instances whose UDP replies go into the TUN from any address. */
  replyPorts: readonly { lo: number; hi: number }[];
  /** The protocols of the virtual services: the reply rules of each (see replyRules). */
  replyProtocols: readonly ('tcp' | 'udp')[];
  /**
   * Instances on a local address other than the TUN's (`instances[].address`):
   * each address with its instances' ports, merged into ranges. Their TCP
   * replies go into the TUN by address and port (see replyRules).
   */
  otherInstanceAddrs?: readonly { addr: string; ports: readonly { lo: number; hi: number }[] }[];
  routeTable: number;
  rulePriority: number;
  /**
   * Cooperative client side: the (IPv4) VIPs of services a peer serves, each with
   * the address whose route it takes: its peer's, or itself when the peer is
   * reached over IPv6 (the host's own way to the VIP, looked up before vpm routes
   * it to the TUN). Packets vpm writes back towards them (VIP:p2) must leave
   * through the network, not the TUN again: they are routed by table
   * routeTable+1, which holds each VIP by that way, for packets arriving from the TUN.
   */
  peerVips?: readonly { vip: string; peer: string }[];
  /** The IPv6 recipe, or null (absent) when the config uses no IPv6: the TUN then has IPv6 off. */
  ipv6?: HostPlan6 | null;
}

/** The IPv6 half of a plan (addresses in RFC 5952 text). */
export interface HostPlan6 {
  tunAddr: string;
  localClientAddr: string;
  vips: readonly string[];
  /** As HostPlan.otherInstanceAddrs, the IPv6 ones. */
  otherInstanceAddrs: readonly { addr: string; ports: readonly { lo: number; hi: number }[] }[];
  /** As HostPlan.peerVips, the IPv6 VIPs (routed by `ip -6`, the same table and rule priority). */
  peerVips?: readonly { vip: string; peer: string }[];
}

/** `family: 6` marks an `ip -6` rule or route; absent: IPv4 (also in journals written before IPv6). */
export type Change =
  /**
   * The persistent TUN device itself (TUNSETPERSIST): journalled before it is
   * created, so that it is first in the journal and removed last, by
   * `ip link delete`, after everything that refers to it.
   */
  | { kind: 'link'; name: string }
  | { kind: 'rule'; args: string[]; family?: 6 }
  | { kind: 'route'; args: string[]; family?: 6 }
  | {
      kind: 'sysctl';
      key: string;
      old: string;
      value: string;
      /**
       * A per-device sysctl (net.ipv4.conf.<device>.*): skipped on undo when the
       * device no longer exists. Absent in journals written before side effects
       * were recorded, and for host-wide keys.
       */
      device?: string;
    };

export interface Journal {
  pid: number;
  /**
   * Start time of `pid` (/proc/PID/stat field 22, clock ticks since boot): with the
   * pid it names one process, where a pid alone may since have been reused. Absent
   * in journals written before it was recorded.
   */
  pidStart?: string;
  tunName: string;
  started: string;
  changes: Change[];
  /**
   * The names of the service and AID indexes the flow records use (the
   * configuration's order, at start and after each reload): what the next
   * daemon maps them by (src/state/recover.ts). Absent in older journals.
   */
  names?: { aids: string[]; services: string[] };
}

export class HostSetup {
  private readonly journal: Journal;
  /** The operation running now, or the last one: the next starts after it. */
  private tail: Promise<unknown> = Promise.resolve();
  /**
   * Taken over from a previous daemon (`adopted`): its changes are this one's
   * now, a failed `apply` leaves them in place (the host stays as it was before
   * this start), and `apply` ends by removing what the new plan no longer has.
   */
  readonly adopting: boolean;

  constructor(
    private readonly stateFile: string,
    tunName: string,
    adopted: Journal | null = null,
  ) {
    this.adopting = adopted !== null;
    this.journal = {
      pid: process.pid,
      pidStart: procStart(process.pid) ?? undefined,
      tunName,
      started: new Date().toISOString(),
      changes: adopted ? [...adopted.changes] : [],
      ...(adopted?.names ? { names: adopted.names } : {}),
    };
  }

  /**
   * Journal the persistent TUN `name` (before it is created: see Change). Not
   * again when the journal has it (an adopted one).
   */
  recordLink(name: string): void {
    if (this.journal.changes.some((c) => c.kind === 'link' && c.name === name)) return;
    this.journal.changes.unshift({ kind: 'link', name });
    this.save();
  }

  /** Journal the names of the flow records' indexes (see Journal.names). */
  setNames(names: { aids: string[]; services: string[] }): void {
    this.journal.names = names;
    this.save();
  }

  private save(): void {
    mkdirSync(dirname(this.stateFile), { recursive: true, mode: 0o700 });
    const tmp = `${this.stateFile}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(this.journal, null, 2)}\n`, { mode: 0o600 });
    renameSync(tmp, this.stateFile);
  }

  /** Run `op` after the operations queued before it (see the theory of operation). */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    const r = this.tail.then(op);
    this.tail = r.catch(() => {});
    return r;
  }

  /** Configure the host for the TUN (already created). On failure, undoes what it did and rethrows. */
  apply(plan: HostPlan): Promise<void> {
    return this.serial(() => this.applyNow(plan));
  }

  private async applyNow(plan: HostPlan): Promise<void> {
    this.save();
    this.wanted = new Set();
    try {
      const dev = plan.tunName;
      // Per-device settings die with the device: not journalled.
      const devKey = (family: string, name: string) =>
        `net.${family}.conf.${dev.replace(/\./g, '/')}.${name}`;
      const v6 = plan.ipv6 ?? null;
      // The ways to the peers, as the host routes them without vpm: looked up
      // before any route of vpm's exists (a VIP routed by the way to itself
      // would otherwise find the TUN).
      // An adopted journal has the ways of the peers it had: they are kept as
      // they are (a VIP that is its own peer would find the TUN now).
      const out = String(plan.routeTable + 1);
      const journalled = (vip: string, family: 4 | 6) =>
        this.journal.changes.some(
          (c) =>
            c.kind === 'route' &&
            (c.family === 6 ? 6 : 4) === family &&
            c.args[0] === `${vip}/${family === 6 ? 128 : 32}` &&
            c.args[2] === out,
        );
      const peerRoutes4 = await peerRoutes(
        (plan.peerVips ?? []).filter((p) => !journalled(p.vip, 4)),
        4,
      );
      const peerRoutes6 = await peerRoutes(
        (v6?.peerVips ?? []).filter((p) => !journalled(p.vip, 6)),
        6,
      );
      for (const p of plan.peerVips ?? []) this.wanted.add(`4 route ${p.vip}/32 table ${out}`);
      for (const p of v6?.peerVips ?? []) this.wanted.add(`6 route ${p.vip}/128 table ${out}`);
      if (v6 !== null) {
        // Before the link goes up, which is when the kernel would start DAD,
        // router solicitations and a link-local address.
        await writeSysctl(devKey('ipv6', 'disable_ipv6'), '0');
        for (const [name, value] of TUN_IPV6_SYSCTLS)
          await writeSysctl(devKey('ipv6', name), value);
        // Forwarding before the link goes up too, and the TUN out of multicast
        // first: all.forwarding=1 sets every device's forwarding, the TUN's with
        // it, and a forwarding device with IFF_MULTICAST joins the all-routers
        // groups (ff02::2, ff05::2: dev_forward_change), which the kernel then
        // reports by MLD on the TUN, and leaving them again later queues a report
        // too. With multicast off it joins none: ff02::1 and ff01::1 are left, never
        // reported (and a TUN is NOARP: no solicited-node groups). Forwarding reads
        // all.forwarding (or the ingress device's force_forwarding), not the TUN's
        // own, which is set back to 0: the TUN is no router interface.
        await run('ip', ['link', 'set', 'dev', dev, 'multicast', 'off']);
        await this.setIpv6Forward(dev);
        await writeSysctl(devKey('ipv6', 'forwarding'), '0');
      } else if (existsSync(`/proc/sys/net/ipv6/conf/${dev}`))
        await writeSysctl(devKey('ipv6', 'disable_ipv6'), '1');
      // Packets written to the TUN carry the client's address as source, whose
      // route is not the TUN: loose reverse-path filtering lets them in without
      // touching the host-wide setting (the kernel uses max(all, device)).
      await writeSysctl(devKey('ipv4', 'rp_filter'), '2');
      await writeSysctl(devKey('ipv4', 'forwarding'), '1');
      // ICMP the host itself sends from the TUN address goes through vpm (the rule
      // below); what is about no flow vpm writes back unchanged, with that local
      // address as its source, which the kernel accepts on the TUN only so.
      await writeSysctl(devKey('ipv4', 'accept_local'), '1');
      await run('ip', [
        'link',
        'set',
        'dev',
        dev,
        'mtu',
        String(plan.mtu),
        'txqueuelen',
        String(plan.txQueueLen),
      ]);
      await run('ip', ['addr', 'replace', `${plan.tunAddr}/32`, 'dev', dev]);
      if (v6 !== null)
        await run('ip', ['-6', 'addr', 'replace', `${v6.tunAddr}/128`, 'dev', dev, 'nodad']);
      await run('ip', ['link', 'set', 'dev', dev, 'up']);
      for (const vip of plan.vips) await run('ip', ['route', 'replace', `${vip}/32`, 'dev', dev]);
      await run('ip', ['route', 'replace', `${plan.localClientAddr}/32`, 'dev', dev]);
      await run('ip', [
        'route',
        'replace',
        'default',
        'dev',
        dev,
        'table',
        String(plan.routeTable),
      ]);
      for (const args of replyRules(plan)) await this.addRule(args);
      await this.addRule(icmpRule(plan));
      if (v6 !== null) {
        for (const vip of v6.vips)
          await run('ip', ['-6', 'route', 'replace', `${vip}/128`, 'dev', dev]);
        await run('ip', ['-6', 'route', 'replace', `${v6.localClientAddr}/128`, 'dev', dev]);
        await run('ip', [
          '-6',
          'route',
          'replace',
          'default',
          'dev',
          dev,
          'table',
          String(plan.routeTable),
        ]);
        for (const args of replyRules6(plan)) await this.addRule(args, 6);
        await this.addRule(icmpRule6(plan), 6);
      }
      for (const [family, routes, all] of [
        [4, peerRoutes4, plan.peerVips ?? []],
        [6, peerRoutes6, v6?.peerVips ?? []],
      ] as const) {
        if (all.length === 0) continue;
        const ip = ipFamily(family);
        for (const { vip, via, dev: peerDev } of routes) {
          const dst = `${vip}/${family === 6 ? 128 : 32}`;
          const gw = via === undefined ? [] : ['via', via];
          await run('ip', [...ip, 'route', 'replace', dst, ...gw, 'dev', peerDev, 'table', out]);
          this.journal.changes.push(
            family === 6
              ? { kind: 'route', args: [dst, 'table', out], family }
              : { kind: 'route', args: [dst, 'table', out] },
          );
          this.save();
        }
        await this.addRule(['pref', String(plan.rulePriority), 'iif', dev, 'lookup', out], family);
      }
      await this.setIpForward();
      if (this.adopting) await this.reconcile(plan);
    } catch (e) {
      // What a previous daemon left and this one took over stays: the host is as it was before this start.
      if (!this.adopting) await this.undoNow();
      throw e;
    }
  }

  /** Rules and routes `apply` asked for: what `reconcile` keeps ("4 rule ARGS", "6 route DST table T"). */
  private wanted = new Set<string>();

  /**
   * After applying a plan over a previous daemon's state (another config,
   * perhaps): remove what that state has and the plan does not — journalled
   * rules and peer routes, and the TUN's own addresses and routes (which die
   * with the device, so are not journalled, but outlive a daemon now that the
   * device is persistent).
   */
  private async reconcile(plan: HostPlan): Promise<void> {
    const keep: Change[] = [];
    for (const c of this.journal.changes) {
      const family = c.kind !== 'link' && c.kind !== 'sysctl' && c.family === 6 ? 6 : 4;
      if (c.kind === 'rule' && !this.wanted.has(`${family} rule ${c.args.join(' ')}`)) {
        if (await ruleExists(c.args, family))
          await run('ip', [...ipFamily(family), 'rule', 'del', ...c.args]);
      } else if (c.kind === 'route' && !this.wanted.has(`${family} route ${c.args.join(' ')}`)) {
        await run('ip', [...ipFamily(family), 'route', 'del', ...c.args]).catch(() => '');
      } else keep.push(c);
    }
    this.journal.changes = keep;
    this.save();
    const dev = plan.tunName;
    const v6 = plan.ipv6 ?? null;
    const addrs = new Set([`${plan.tunAddr}/32`, ...(v6 ? [`${v6.tunAddr}/128`] : [])]);
    const info = JSON.parse(await run('ip', ['-j', 'addr', 'show', 'dev', dev])) as {
      addr_info?: { family: string; local: string; prefixlen: number; scope?: string }[];
    }[];
    for (const a of info[0]?.addr_info ?? []) {
      const text = `${a.local}/${a.prefixlen}`;
      if (a.scope === 'link' || addrs.has(text)) continue;
      await run('ip', [...(a.family === 'inet6' ? ['-6'] : []), 'addr', 'del', text, 'dev', dev]);
    }
    const main = new Set([
      ...plan.vips.map((v) => `${v}/32`),
      `${plan.localClientAddr}/32`,
      ...(v6 ? [...v6.vips.map((v) => `${v}/128`), `${v6.localClientAddr}/128`] : []),
    ]);
    for (const family of [4, 6] as const) {
      for (const table of ['main', String(plan.routeTable)]) {
        // A table that has no route of this family does not exist for it ("FIB table does not exist").
        const listed = await run('ip', [
          ...ipFamily(family),
          '-j',
          'route',
          'show',
          'table',
          table,
          'dev',
          dev,
        ]).catch(() => '[]');
        const routes = JSON.parse(listed || '[]') as { dst: string; protocol?: string }[];
        for (const r of routes) {
          if (r.protocol === 'kernel') continue; // the kernel's own (an address's prefix route)
          const dst =
            r.dst === 'default' || r.dst.includes('/')
              ? r.dst
              : `${r.dst}/${family === 6 ? 128 : 32}`;
          const wanted =
            table === 'main' ? main.has(dst) : r.dst === 'default' && (family === 4 || v6 !== null);
          if (!wanted)
            await run('ip', [
              ...ipFamily(family),
              'route',
              'del',
              r.dst,
              'table',
              table,
              'dev',
              dev,
            ]);
        }
      }
    }
  }

  /**
   * Bring the reply rules in line with a new plan (config reload): add the missing
   * ones, then remove journalled ones that are no longer wanted (make before break).
   */
  updateReplyPorts(plan: HostPlan): Promise<void> {
    return this.serial(async () => {
      const want = replyRules(plan);
      for (const args of want) await this.addRule(args);
      // IPv6 is restart-only: a reload keeps the family set of the start.
      const want6 = plan.ipv6 ? replyRules6(plan) : [];
      for (const args of want6) await this.addRule(args, 6);
      const key = (family: 4 | 6, args: readonly string[]) => `${family} ${args.join(' ')}`;
      const wantKeys = new Set([...want.map((a) => key(4, a)), ...want6.map((a) => key(6, a))]);
      const keep: Change[] = [];
      for (const c of this.journal.changes) {
        const family = c.kind === 'rule' && c.family === 6 ? 6 : 4;
        if (c.kind === 'rule' && isReplyRule(c.args) && !wantKeys.has(key(family, c.args))) {
          if (await ruleExists(c.args, family))
            await run('ip', [...ipFamily(family), 'rule', 'del', ...c.args]);
        } else {
          keep.push(c);
        }
      }
      this.journal.changes = keep;
      this.save();
    });
  }

  private async addRule(args: string[], family: 4 | 6 = 4): Promise<void> {
    this.wanted.add(`${family} rule ${args.join(' ')}`);
    if (await ruleExists(args, family)) return;
    this.journal.changes.push(
      family === 6 ? { kind: 'rule', args, family } : { kind: 'rule', args },
    );
    this.save();
    await run('ip', [...ipFamily(family), 'rule', 'add', ...args]);
  }

  /**
   * IPv6 forwarding, both ways through the TUN: a client's packet to a VIP
   * arrives on one of the host's devices and is forwarded into the TUN, and what
   * vpm writes into the TUN towards a client elsewhere is forwarded out. IPv6
   * forwards a packet only if net.ipv6.conf.all.forwarding is on or, since Linux
   * 6.17, the packet's *ingress* device has force_forwarding (ip6_forward in
   * net/ipv6/ip6_output.c). The TUN's own force_forwarding would only cover the
   * second way, and the devices clients come in on are any of the host's (and
   * may appear later), so vpm sets all.forwarding=1, as it sets ip_forward for
   * IPv4.
   *
   * all.forwarding=1 the kernel does not take alone
   * (addrconf_fixup_forwarding, net/ipv6/addrconf.c): it sets
   * conf.default.forwarding and every device's conf.<dev>.forwarding to the new
   * value (addrconf_forward_change: the device joins or leaves the all-routers
   * groups, its anycast addresses change), when turned on it deletes the
   * default routes learned from router advertisements on every device whose
   * accept_ra is not 2 (rt6_purge_dflt_routers), and from then on such a
   * device (accept_ra=1) ignores router advertisements. When it is turned off
   * again, the kernel also clears every device's force_forwarding (6.17+).
   * So, journalled before the change: every device's forwarding and
   * force_forwarding and default.forwarding (restored after all.forwarding on
   * undo, newest first), and accept_ra=2 on each device where it is 1 (the TUN
   * aside), which keeps the host taking router advertisements and its
   * RA-learned default routes while vpm runs, as it did before; undo puts 1 back.
   */
  private async setIpv6Forward(dev: string): Promise<void> {
    const key = 'net.ipv6.conf.all.forwarding';
    const old = await readSysctl(key);
    if (old === '1') return;
    for (const c of await forward6SideEffects(dev)) {
      this.journal.changes.push(c);
      this.save();
      // The side effects themselves are the kernel's; accept_ra=2 is vpm's.
      if (c.kind === 'sysctl' && c.key.endsWith('.accept_ra')) await writeSysctl(c.key, c.value);
    }
    this.journal.changes.push({ kind: 'sysctl', key, old, value: '1' });
    this.save();
    await writeSysctl(key, '1');
  }

  /**
   * net.ipv4.ip_forward=1, and what the kernel changes with it. Writing
   * ip_forward (which is conf.all.forwarding) runs inet_forward_change
   * (net/ipv4/devinet.c) whenever the value changes: it sets
   * conf.all.accept_redirects to the opposite of the new value,
   * conf.default.forwarding to it, and conf.<dev>.forwarding of every device to
   * it. Restoring ip_forward=0 therefore turns all.accept_redirects on and every
   * device's forwarding off, whatever they were before. So before the change,
   * the values it will overwrite are journalled, ahead of ip_forward itself:
   * undo (newest first) restores ip_forward, and then those, on the devices that
   * still exist. IPv6 has its own (setIpv6Forward), when the config uses IPv6.
   */
  private async setIpForward(): Promise<void> {
    const key = 'net.ipv4.ip_forward';
    const old = await readSysctl(key);
    if (old === '1') return;
    for (const c of await forwardSideEffects('1', this.journal.tunName))
      this.journal.changes.push(c);
    this.journal.changes.push({ kind: 'sysctl', key, old, value: '1' });
    this.save();
    await writeSysctl(key, '1');
  }

  /** Undo every journalled change, newest first, and remove the state file. */
  undo(): Promise<void> {
    return this.serial(() => this.undoNow());
  }

  private async undoNow(): Promise<void> {
    await undoJournal(this.journal);
    rmSync(this.stateFile, { force: true });
  }
}

/**
 * The reply rules: what the instances send goes into the TUN.
 *
 * One rule per protocol of the services on the TUN address, whatever the ports:
 * `from A ipproto tcp|udp`. The instances listen on A (an accepted connection's
 * local address is the one its SYN was translated to), and the kernel's own
 * route lookups for path MTU discovery carry no ports (__build_flow_key and
 * build_sk_flow_key in net/ipv4/route.c pass ports 0): a rule on the source port
 * would send those lookups to the main table, whose route would get the
 * "fragmentation needed" MTU while the connection's route through the TUN
 * kept its own — the connection would stall. So everything TCP/UDP the host
 * sends from A goes through vpm; A is vpm's address and nothing else uses it.
 *
 * For UDP also one rule per instance port range from any address the host
 * itself sends (`iif lo`): a server bound to the wildcard address answers with
 * sendto(), and its source address is chosen by this very route lookup — table
 * T's route through the TUN gives it A — so a rule on the source could not
 * match it. That rule also steers the UDP replies of an instance on another
 * local address X (`instances[].address`).
 *
 * For TCP instances on another local address X (the uplink's, say): one rule per
 * address and instance port range, `from X ipproto tcp sport P`. X is not vpm's:
 * the host's own traffic from it (ssh, anything) must keep its routes, so the
 * rule names the ports. The price is the path-MTU lookup above: a "fragmentation
 * needed" for such an instance's connection lands on the main table's route (see
 * docs/deployment.md). No ICMP rule for X either: it would send every ICMP error
 * the host sends from its uplink into vpm, which drops those about no flow.
 */
function replyRules(plan: HostPlan): string[][] {
  return replyRulesFrom(plan, plan.tunAddr, plan.otherInstanceAddrs ?? []);
}

/**
 * The reply rules in IPv6 form: the same as `replyRules` (see there for why),
 * from the TUN's IPv6 address and the other IPv6 instance addresses.
 */
function replyRules6(plan: HostPlan): string[][] {
  return replyRulesFrom(plan, plan.ipv6!.tunAddr, plan.ipv6!.otherInstanceAddrs);
}

/** `replyRules` of one family: its TUN address and other instance addresses. */
function replyRulesFrom(
  plan: HostPlan,
  tunAddr: string,
  others: readonly { addr: string; ports: readonly { lo: number; hi: number }[] }[],
): string[][] {
  const pref = ['pref', String(plan.rulePriority)];
  const lookup = ['lookup', String(plan.routeTable)];
  const out: string[][] = [];
  for (const proto of plan.replyProtocols) {
    out.push([...pref, 'from', tunAddr, 'ipproto', proto, ...lookup]);
    if (proto !== 'udp') continue;
    for (const r of plan.replyPorts)
      out.push([...pref, 'iif', 'lo', 'ipproto', proto, 'sport', portSpec(r), ...lookup]);
  }
  if (plan.replyProtocols.includes('tcp'))
    for (const { addr, ports } of others)
      for (const r of ports)
        out.push([...pref, 'from', addr, 'ipproto', 'tcp', 'sport', portSpec(r), ...lookup]);
  return out;
}

/** ICMPv6 the host sends from the TUN's IPv6 address goes through vpm (as `icmpRule`). */
function icmpRule6(plan: HostPlan): string[] {
  return [
    'pref',
    String(plan.rulePriority),
    'from',
    plan.ipv6!.tunAddr,
    'ipproto',
    'ipv6-icmp',
    'iif',
    'lo',
    'lookup',
    String(plan.routeTable),
  ];
}

/** The TUN's IPv6 settings, written before it goes up (see the theory of operation). */
const TUN_IPV6_SYSCTLS: readonly (readonly [string, string])[] = [
  ['accept_dad', '0'],
  ['dad_transmits', '0'],
  ['router_solicitations', '0'],
  ['accept_ra', '0'],
  ['autoconf', '0'],
  // IN6_ADDR_GEN_MODE_NONE: no link-local address (nothing on the TUN needs one).
  ['addr_gen_mode', '1'],
];

const ipFamily = (family: 4 | 6): string[] => (family === 6 ? ['-6'] : []);

/**
 * The way to each peer VIP's `peer` address (`ip route get`, of the family):
 * the gateway (if any) and the device. Throws ERR_HOST_COMMAND naming a peer
 * the host has no route to.
 */
async function peerRoutes(
  peerVips: readonly { vip: string; peer: string }[],
  family: 4 | 6,
): Promise<{ vip: string; via: string | undefined; dev: string }[]> {
  const out: { vip: string; via: string | undefined; dev: string }[] = [];
  for (const { vip, peer } of peerVips) {
    const r = JSON.parse(await run('ip', [...ipFamily(family), '-j', 'route', 'get', peer]))[0] as
      | { gateway?: string; dev?: string }
      | undefined;
    if (!r?.dev)
      throw new HostError(
        'ERR_HOST_COMMAND',
        `no route to peer ${peer} (ip ${family === 6 ? '-6 ' : ''}route get ${peer})`,
      );
    out.push({ vip, via: r.gateway, dev: r.dev });
  }
  return out;
}

const portSpec = (r: { lo: number; hi: number }) =>
  r.lo === r.hi ? String(r.lo) : `${r.lo}-${r.hi}`;

/** A reply rule (of `replyRules`), as journalled: TCP or UDP to the route table. */
function isReplyRule(args: readonly string[]): boolean {
  const i = args.indexOf('ipproto');
  return i >= 0 && (args[i + 1] === 'tcp' || args[i + 1] === 'udp');
}

/**
 * ICMP the host sends from the TUN address (port unreachable from an instance
 * port nobody listens on, an error about a flow's packet) must leave through vpm,
 * which translates it, instead of by the main table with the real port quoted in
 * it. `iif lo`: only what the host itself sends, not what vpm writes back into the
 * TUN (which would loop).
 */
function icmpRule(plan: HostPlan): string[] {
  return [
    'pref',
    String(plan.rulePriority),
    'from',
    plan.tunAddr,
    'ipproto',
    'icmp',
    'iif',
    'lo',
    'lookup',
    String(plan.routeTable),
  ];
}

async function ruleExists(args: readonly string[], family: 4 | 6 = 4): Promise<boolean> {
  const prefIdx = args.indexOf('pref');
  const out = await run('ip', [...ipFamily(family), 'rule', 'show', 'pref', args[prefIdx + 1]!]);
  return out.split('\n').some((line) => ruleShows(line, args));
}

/** The selectors vpm sets on its rules, compared by `ruleShows`. */
const RULE_SELECTORS = ['from', 'iif', 'ipproto', 'sport', 'lookup'] as const;

/**
 * Is `line` of `ip rule show` (which prints rules in a canonical form) the rule
 * `args`? Compared on the selectors vpm sets, word by word: "sport 19001" is not
 * "sport 19001-19002", which the reply rules of one reload and the next may be;
 * and a selector the rule does not set must not be in the line ("from A ipproto
 * tcp" is not "from A ipproto tcp sport 19001"; no `from` shows as "from all").
 */
export function ruleShows(line: string, args: readonly string[]): boolean {
  const words = line.trim().split(/\s+/);
  return RULE_SELECTORS.every((k) => {
    const i = args.indexOf(k);
    const j = words.indexOf(k);
    if (i < 0) return k === 'from' ? j < 0 || words[j + 1] === 'all' : j < 0;
    return j >= 0 && words[j + 1] === args[i + 1];
  });
}

const IPV4_CONF = '/proc/sys/net/ipv4/conf';
const IPV6_CONF = '/proc/sys/net/ipv6/conf';

/** Does network device `dev` (as in /proc/sys/net/ipv4/conf) exist in this namespace? */
export function deviceExists(dev: string): boolean {
  return existsSync(`${IPV4_CONF}/${dev}`) || existsSync(`${IPV6_CONF}/${dev}`);
}

/**
 * What writing net.ipv6.conf.all.forwarding=1 changes and what vpm changes with
 * it (see setIpv6Forward), with the current values: conf.default.forwarding,
 * each device's forwarding and force_forwarding (where the kernel has it),
 * and accept_ra 1 → 2 on each device other than the TUN `tun`.
 */
export async function forward6SideEffects(tun: string): Promise<Change[]> {
  const out: Change[] = [];
  const one = async (dev: string, name: string, value: string, device?: string) => {
    const key = `net.ipv6.conf.${dev}.${name}`;
    const old = await readSysctl(key);
    out.push(
      device === undefined
        ? { kind: 'sysctl', key, old, value }
        : { kind: 'sysctl', key, old, value, device },
    );
    return old;
  };
  await one('default', 'forwarding', '1');
  const devs = readdirSync(IPV6_CONF)
    .filter((d) => d !== 'all' && d !== 'default' && d !== tun)
    .sort();
  for (const d of devs) {
    const k = d.replace(/\./g, '/');
    try {
      await one(k, 'forwarding', '1', d);
      if (existsSync(`${IPV6_CONF}/${d}/force_forwarding`))
        await one(k, 'force_forwarding', '0', d);
      if ((await readSysctl(`net.ipv6.conf.${k}.accept_ra`)) === '1')
        await one(k, 'accept_ra', '2', d);
    } catch {
      // the device went away meanwhile: nothing of it to restore
    }
  }
  return out;
}

/**
 * The sysctls that writing ip_forward=`on` changes as a side effect (see
 * setIpForward), with their current values: conf.all.accept_redirects (set to
 * !on), conf.default.forwarding and each device's forwarding (set to on).
 */
export async function forwardSideEffects(on: '0' | '1', tun?: string): Promise<Change[]> {
  const out: Change[] = [];
  const one = async (dev: string, name: string, value: string, device?: string) => {
    const key = `net.ipv4.conf.${dev}.${name}`;
    const old = await readSysctl(key);
    out.push(
      device === undefined
        ? { kind: 'sysctl', key, old, value }
        : { kind: 'sysctl', key, old, value, device },
    );
  };
  await one('all', 'accept_redirects', on === '1' ? '0' : '1');
  await one('default', 'forwarding', on);
  // Device names may hold dots: the key carries them as '/' (see sysctl.ts).
  // The TUN's own settings are vpm's (set before it goes up) and go with it.
  const devs = readdirSync(IPV4_CONF)
    .filter((d) => d !== 'all' && d !== 'default' && d !== tun)
    .sort();
  for (const d of devs) {
    try {
      await one(d.replace(/\./g, '/'), 'forwarding', on, d);
    } catch {
      // the device went away meanwhile: nothing of it to restore
    }
  }
  return out;
}

/** Undo a journal's changes, newest first. Errors are collected, not thrown halfway. */
export async function undoJournal(j: Journal): Promise<string[]> {
  const errors: string[] = [];
  for (let i = j.changes.length - 1; i >= 0; i--) {
    const c = j.changes[i]!;
    try {
      if (c.kind === 'link') {
        if (deviceExists(c.name)) await run('ip', ['link', 'delete', 'dev', c.name]);
      } else if (c.kind === 'rule') {
        const family = c.family === 6 ? 6 : 4;
        if (await ruleExists(c.args, family))
          await run('ip', [...ipFamily(family), 'rule', 'del', ...c.args]);
      } else if (c.kind === 'route') {
        try {
          await run('ip', [...ipFamily(c.family === 6 ? 6 : 4), 'route', 'del', ...c.args]);
        } catch {
          // already gone (its device went away)
        }
      } else if (c.device === undefined || deviceExists(c.device)) {
        await writeSysctl(c.key, c.old);
      }
    } catch (e) {
      errors.push((e as Error).message);
    }
  }
  j.changes.length = 0;
  return errors;
}

export function readJournal(stateFile: string): Journal | null {
  if (!existsSync(stateFile)) return null;
  try {
    const j = JSON.parse(readFileSync(stateFile, 'utf8')) as Journal;
    if (!Array.isArray(j.changes)) throw new Error('no changes list');
    return j;
  } catch (e) {
    throw new HostError(
      'ERR_HOST_STATE',
      `state file ${stateFile} is unreadable: ${(e as Error).message}`,
    );
  }
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Is the daemon that wrote journal `j` still running? Its pid must be alive (not a
 * zombie) and, when the journal recorded it, have the same start time: a pid of a
 * crashed daemon may have been reused by any other process.
 */
export function journalOwnerAlive(j: Journal): boolean {
  if (!pidAlive(j.pid)) return false;
  if (j.pidStart !== undefined) return sameProcess(j.pid, j.pidStart);
  const st = procStat(j.pid);
  if (st === null || st.state === 'Z' || st.state === 'X' || st.state === 'x') return false;
  return isVpm(j.pid); // a journal without pidStart: the old, weaker test
}

/**
 * The journal of a dead daemon whose host state the next `vpm up` takes over
 * (crash survival): its owner is not running, it journalled the persistent
 * TUN `tunName`, and that device still exists. Null otherwise (no journal, an
 * older one without a persistent TUN, the device deleted meanwhile): then
 * `cleanStale` undoes it. Throws ERR_HOST_STATE for an unreadable journal.
 */
export function adoptableJournal(stateFile: string, tunName: string): Journal | null {
  const j = readJournal(stateFile);
  if (j === null || j.pid === process.pid || journalOwnerAlive(j)) return null;
  const link = j.changes.some((c) => c.kind === 'link' && c.name === tunName);
  return link && j.tunName === tunName && deviceExists(tunName) ? j : null;
}

/**
 * Remove what a dead daemon left behind (rules, ip_forward). Throws when the
 * journal's daemon is still running. Returns a description of what was undone.
 */
export async function cleanStale(stateFile: string): Promise<string[]> {
  const j = readJournal(stateFile);
  if (j === null) return [];
  if (j.pid !== process.pid && journalOwnerAlive(j)) {
    const elsewhere = netnsLink(j.pid) !== netnsLink('self');
    throw new HostError(
      'ERR_ALREADY_RUNNING',
      `vpm is already running for ${j.tunName} (pid ${j.pid}, state ${stateFile})` +
        (elsewhere
          ? ': it runs in another network namespace with the same control socket directory; set control.socket in this config to a path of its own'
          : ''),
    );
  }
  // A device's sysctl is restored only while the device exists (the TUN is gone).
  const done = j.changes.flatMap((c) =>
    c.kind === 'link'
      ? deviceExists(c.name)
        ? [`ip link delete dev ${c.name}`]
        : []
      : c.kind !== 'sysctl'
        ? [`ip ${c.family === 6 ? '-6 ' : ''}${c.kind} del ${c.args.join(' ')}`]
        : c.device === undefined || deviceExists(c.device)
          ? [`sysctl ${c.key}=${c.old}`]
          : [],
  );
  const errors = await undoJournal(j);
  if (errors.length > 0)
    throw new HostError(
      'ERR_HOST_STALE',
      `could not undo stale state of ${stateFile}: ${errors.join('; ')}`,
    );
  rmSync(stateFile, { force: true });
  return done;
}

function isVpm(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('vpm');
  } catch {
    return false;
  }
}

export { HostError };
