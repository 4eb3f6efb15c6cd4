/**
 * `vpm up` (and `vpm restart`): the daemon — its wiring, signals and reload.
 *
 * Start-up order, each step undone if a later one fails, so that a failed start
 * leaves the host as it was (over a previous daemon's state: as it found it):
 *   1. load and validate the config (nothing touched yet; errors exit 2);
 *   2. `vpm restart`: ask the running daemon of this config for its TUN
 *      (`takeOver`: it hands the fd over and exits);
 *   3. a dead daemon's journal that names its persistent TUN is taken over
 *      (crash survival); anything else a dead daemon left is undone;
 *   4. the persistent TUN: the fd handed over, or opened (again); the host plan
 *      applied now on a fresh start;
 *   5. the table in a new state-file mapping, rules, instances, the registry and
 *      then the flows taken over (src/state/), the pipeline; start reading;
 *   6. taking over: the host plan applied over what is there, the rest removed;
 *   7. peers, the control socket (its commands: control-handlers.ts), metrics.
 * SIGINT/SIGTERM undo it all in reverse (with --keep-state: leave it all for
 * the next start); the control command `handover` hands it all to a new
 * daemon; SIGHUP (or the control command `reload`) reloads the config: new
 * rules apply to new connections, flows in the table keep their translation.
 * What a reload changes is decided by `reloadPlan` (reload.ts). */

import { existsSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { connect } from 'node:net';
import { networkInterfaces } from 'node:os';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { monoNow } from '../base/clock.js';
import { netnsLink } from '../base/netns.js';
import { ConfigError } from '../config/errors.js';
import { loadConfig } from '../config/load.js';
import { serviceAddresses } from '../config/summary.js';
import type { Config } from '../config/types.js';
import { AccessPolicy } from '../control/access.js';
import { controlRequest } from '../control/client.js';
import { ControlServer } from '../control/server.js';
import { Cooperation } from '../coop/cooperation.js';
import { Counters, DROP_NAMES } from '../datapath/counters.js';
import { type Instance, InstanceSet } from '../datapath/instances.js';
import { Pipeline } from '../datapath/pipeline.js';
import type { Rules } from '../datapath/rules.js';
import { STATE_NAMES } from '../flow/state.js';
import { FlowTable } from '../flow/table.js';
import {
  adoptableJournal,
  cleanStale,
  deviceExists,
  HostError,
  HostSetup,
  journalOwnerAlive,
  pidAlive,
  readJournal,
} from '../host/setup.js';
import { createFlowFile, readFlowFile } from '../state/flow-file.js';
import { type RecoveryResult, recoverFlows } from '../state/recover.js';
import { loadRegistryState, saveRegistryState } from '../state/registry-file.js';
import { offloadNames } from '../tun/device.js';
import { closeFd, listenForHandover, sendHandover, tunHandoverInfo } from '../tun/handover.js';
import { adoptTun, type KernelTun, openTun } from '../tun/kernel-tun.js';
import type { FlowView, InstanceView } from '../view/views.js';
import { PortPool } from '../virtual/pool.js';
import { Registry } from '../virtual/registry.js';
import {
  formatEndpoint,
  ipv6FromBytes,
  ipv6FromWords,
  ipv6ToWords,
  ipv6Words,
  parseAddr,
  parseIpv4,
  parseIpv6,
} from '../wire/address.js';
import { IPPROTO_UDP } from '../wire/ipv4.js';
import type { PacketInfo } from '../wire/parse.js';
import { registerControlHandlers } from './control-handlers.js';
import { readDeviceCounters } from './device-counters.js';
import { createLogger } from './log.js';
import { buildMetrics, serveMetrics } from './metrics.js';
import { refuseUnsupportedQueues } from './queues.js';
import { ipv6ReloadProblem, type ReloadResult, reloadPlan } from './reload.js';
import {
  healthLimits,
  hostPlanFromConfig,
  pipelineLimits,
  rulesFromConfig,
  staticInstancesFromConfig,
  timerTimeouts,
} from './rules-from-config.js';

/**
 * The journal of host changes lives beside the control socket, so that daemons
 * with different socket paths never share one. The default socket path is unique
 * per network namespace (base/netns.ts), so two daemons with one TUN name in two
 * namespaces have two journals; two configs that set the same control.socket
 * share both, and the second daemon refuses to start (`refuseHeldSocket`).
 */
export const stateFileFor = (cfg: Config) =>
  join(dirname(cfg.control.socket), `${cfg.tun.name}.state.json`);

/** The flow table's records (src/state/flow-file.ts), beside the journal. */
export const flowsFileFor = (cfg: Config) =>
  join(dirname(cfg.control.socket), `${cfg.tun.name}.flows`);

/** The registry's state (src/state/registry-file.ts), beside the journal. */
export const registryFileFor = (cfg: Config) =>
  join(dirname(cfg.control.socket), `${cfg.tun.name}.registry.json`);

/** Where a new daemon (`vpm restart`) listens for the running one's TUN fd. */
export const handoverPathFor = (cfg: Config) =>
  join(dirname(cfg.control.socket), `${cfg.tun.name}.handover`);

/** How long each step of a handover may take (the fd's passage; the old daemon's exit). */
const HANDOVER_TIMEOUT_MS = 5000;

/** How the daemon starts, and ends on SIGTERM/SIGINT. */
export interface DaemonOptions {
  /**
   * `vpm restart`: take over from the daemon running with this config — it
   * stops reading, hands its TUN's fd over (SCM_RIGHTS, src/tun/handover.ts)
   * and exits without undoing anything — so that no packet is lost (the kernel
   * queues them in the TUN meanwhile). Without a running daemon, a plain start
   * (over whatever state a crashed one left).
   */
  handover?: boolean;
  /**
   * `vpm up --keep-state`: exit without undoing anything — the persistent TUN,
   * its routes, the rules and sysctls, and the state files stay for the next
   * `vpm up` to take over (supervisors: scripts/systemd/vpm.service). Default:
   * undo it all (Ctrl-C in a terminal).
   */
  keepState?: boolean;
}

/** Longest a UDP local-client report waits to be written to the registry's state file. */
const REPORTS_WRITE_MS = 200;
/** Most flows removed per expiry tick; the rest wait for the next tick. */
const EXPIRE_BUDGET = 20_000;
const EXPIRE_INTERVAL_MS = 1000;
/** `flow_refused` log lines per second at most (see flowEvent). */
const REFUSED_LOGS_PER_SECOND = 20;

/**
 * IPv4 addresses assigned on this host (in this network namespace): a SYN from
 * one of them comes from a local client. Read in-process (getifaddrs, through
 * libuv), never by running ip(8): it runs at start and on every reload, and the
 * data plane must not wait for it. libuv lists only interfaces that are up and
 * have a carrier (ip addr listed all): an address on an interface without one is
 * taken for a remote client's, which matters only to a local client bound to it
 * (its SYN is classified by the selectors alone). The TUN's own address is added
 * by the caller.
 */
export function localAddresses(): Set<number> {
  const out = new Set<number>();
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) {
      const n = a.family === 'IPv4' ? parseIpv4(a.address) : null;
      if (n !== null) out.add(n);
    }
  }
  return out;
}

/**
 * The IPv6 addresses assigned on this host, as the pipeline's four words per
 * address (`localAddrs6`, `localAddrs6Count` of the IPv6 contract), with the
 * TUN's `tun6` first; read like `localAddresses`. Link-local addresses are
 * left out: a local client's connection to a VIP never has one as its source.
 */
export function localAddresses6(tun6: bigint): {
  localAddrs6: Uint32Array;
  localAddrs6Count: number;
} {
  const addrs = new Set<bigint>([tun6]);
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family !== 'IPv6') continue;
      const n = parseIpv6(a.address);
      if (n !== null && n >> 118n !== 0x3fan) addrs.add(n);
    }
  }
  const words = new Uint32Array(4 * addrs.size);
  [...addrs].forEach((a, i) => {
    ipv6ToWords(a, words, 4 * i);
  });
  return { localAddrs6: words, localAddrs6Count: addrs.size };
}

/** The names of the service and AID indexes of `cfg` (the host journal's `names`: src/state/recover.ts). */
function indexNames(cfg: Config): { aids: string[]; services: string[] } {
  return { aids: cfg.applications.map((a) => a.aid), services: cfg.services.map((s) => s.name) };
}

/** "addr:port" of an instance: its IPv4 address, or its IPv6 one when it has no IPv4 address. */
function instanceEndpoint(i: Instance): string {
  if (i.addr === -1 && i.addr6) return formatEndpoint(ipv6FromWords(i.addr6), i.port);
  return formatEndpoint(i.addr, i.port);
}

/**
 * The flow table's address columns as `flowEndpoints` reads them. `family` and
 * `addr6` are the IPv6 contract's columns (family 4 or 6 per slot; for a v6
 * flow 16 words at slot*16: client +0, vip +4, nat +8, real +12); absent in a
 * table without them, where every flow is IPv4.
 */
export interface FlowAddressColumns {
  clientAddr: Uint32Array;
  vipAddr: Uint32Array;
  natAddr: Uint32Array;
  realAddr: Uint32Array;
  clientPort: Uint16Array | Uint32Array;
  vport: Uint16Array | Uint32Array;
  natPort: Uint16Array | Uint32Array;
  realPort: Uint16Array | Uint32Array;
  family?: Uint8Array;
  addr6?: Uint32Array | null;
}

/**
 * The four endpoints of flow `s` as "a.b.c.d:port" or "[v6]:port" (RFC 5952),
 * and whether the client was translated (a local client): `vpm flows`, logs.
 */
export function flowEndpoints(
  t: FlowAddressColumns,
  s: number,
): { client: string; service: string; real: string; nat: string | null } {
  const v6 = t.family?.[s] === 6 && t.addr6 != null;
  const at = (k: number, v4: Uint32Array, port: number) =>
    v6
      ? formatEndpoint(ipv6FromWords(t.addr6!, s * 16 + 4 * k), port)
      : formatEndpoint(v4[s]!, port);
  const client = at(0, t.clientAddr, t.clientPort[s]!);
  const nat = at(2, t.natAddr, t.natPort[s]!);
  return {
    client,
    service: at(1, t.vipAddr, t.vport[s]!),
    real: at(3, t.realAddr, t.realPort[s]!),
    nat: nat === client ? null : nat,
  };
}

/** Does a live process accept connections on the unix socket `path`? */
function socketAnswers(path: string): Promise<boolean> {
  if (!existsSync(path)) return Promise.resolve(false);
  return new Promise((resolve) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/**
 * Refuse to start, before anything is touched, when the control socket is held
 * by a running daemon: of this config, of another TUN with the same socket path,
 * or of another network namespace (a path is not per namespace). Its listener
 * would otherwise be replaced, and its journal shared.
 */
async function refuseHeldSocket(path: string, stateFile: string): Promise<void> {
  if (!(await socketAnswers(path))) return;
  let owner: number | null = null;
  try {
    const j = readJournal(stateFile);
    if (j && journalOwnerAlive(j)) owner = j.pid;
  } catch {
    // an unreadable journal: cleanStale would say so; the socket is the news here
  }
  const elsewhere = owner !== null && netnsLink(owner) !== netnsLink('self');
  const who =
    owner === null ? '' : ` (pid ${owner}${elsewhere ? ', in another network namespace' : ''})`;
  throw new HostError(
    'ERR_ALREADY_RUNNING',
    `vpm is already running with control socket ${path}${who}: to run another daemon beside it (in another network namespace, or for another TUN), set control.socket in its config to a path of its own`,
  );
}

export class Daemon {
  cfg: Config;
  readonly log: Logger;
  private tun: KernelTun | null = null;
  private host: HostSetup | null = null;
  private control: ControlServer | null = null;
  /** Who may do what on the control socket (src/control/access.ts); follows reloads. */
  private access: AccessPolicy = AccessPolicy.rootOnly();
  private table: FlowTable | null = null;
  private pipeline: Pipeline | null = null;
  private counters: Counters | null = null;
  private rules: Rules | null = null;
  /** The live instances of each AID: static ones (replaced on reload) and registered ones. */
  private readonly instances = new InstanceSet();
  private pool: PortPool | null = null;
  private registry: Registry | null = null;
  private metrics: Server | null = null;
  private coop: Cooperation | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** The refused-flow log limit (flowEvent): the current second, lines logged and left out in it. */
  private refusedWindow = 0;
  private refusedLogged = 0;
  private refusedSuppressed = 0;
  private stopping = false;
  /** The last reload asked for, settled or not: the next one waits for it. */
  private reloading: Promise<void> = Promise.resolve();
  readonly startedAt = Date.now();

  /** Write the registry state now if a write is pending (before a handover or exit). */
  private flushRegistry: () => void = () => {};
  /** What the start took over from a previous daemon (null: a fresh start). */
  private recovered: RecoveryResult | null = null;

  constructor(
    cfg: Config,
    log?: Logger,
    readonly opts: DaemonOptions = {},
  ) {
    this.cfg = cfg;
    this.log = log ?? createLogger(cfg.log.level);
  }

  async start(): Promise<void> {
    const cfg = this.cfg;
    const stateFile = stateFileFor(cfg);
    try {
      // More TUN queues than this daemon runs: refused before anything changes.
      refuseUnsupportedQueues(cfg);
      // Users and groups by name first: a name this host does not know changes nothing.
      this.access = AccessPolicy.fromConfig(cfg);
      const handed = this.opts.handover ? await this.takeOver(cfg, stateFile) : null;
      await refuseHeldSocket(cfg.control.socket, stateFile);
      // A previous daemon's host state with its persistent TUN is taken over
      // (crash survival); anything else it left is undone first.
      const adopted = adoptableJournal(stateFile, cfg.tun.name);
      if (adopted === null) {
        const stale = await cleanStale(stateFile);
        if (stale.length > 0)
          this.log.warn(
            { event: 'stale_state_removed', undone: stale },
            'removed state left by a previous vpm',
          );
        rmSync(flowsFileFor(cfg), { force: true });
        rmSync(registryFileFor(cfg), { force: true });
        // Not one a previous vpm left (that one cleanStale has just deleted): someone else's.
        if (deviceExists(cfg.tun.name))
          throw new HostError(
            'ERR_TUN_EXISTS',
            `a network device named ${cfg.tun.name} exists and no vpm journal names it: remove it (ip link delete dev ${cfg.tun.name}) or set tun.name to another name`,
          );
      }
      const host = new HostSetup(stateFile, cfg.tun.name, adopted);
      this.host = host;
      host.recordLink(cfg.tun.name);

      for (const d of cfg.deprecated)
        this.log.warn({ event: 'config_deprecated', detail: d, file: cfg.source }, d);
      // Down until the host plan has turned IPv6 off on it, so no router chatter
      // reaches us (a persistent TUN taken over is up already, and stays so).
      const tunOpts = {
        batchSize: cfg.tun.batchSize,
        mtu: cfg.tun.mtu,
        txQueueLen: cfg.tun.txQueueLen,
        up: false,
      };
      let tun: KernelTun;
      if (handed !== null && host.adopting) {
        // The running daemon's own fd: its device flags stay as they are (offloads restart-only).
        tun = adoptTun(handed.fd, { ...tunOpts, vnetHdr: handed.vnetHdr, offload: handed.offload });
        if (handed.vnetHdr !== (cfg.tun.offloads === 'auto'))
          this.log.warn(
            { event: 'reload_partial', needsRestart: ['tun.offloads'] },
            'tun.offloads changes only with a fresh start (vpm down, vpm up): the TUN handed over keeps its mode',
          );
      } else {
        if (handed !== null) closeFd(handed.fd);
        tun = openTun({
          ...tunOpts,
          name: cfg.tun.name,
          vnetHdr: cfg.tun.offloads === 'auto',
          persist: true,
        });
      }
      this.tun = tun;
      this.log.info(
        {
          event: 'tun_offloads',
          tun: tun.name,
          mode: cfg.tun.offloads,
          offloads: offloadNames(tun.offload),
          vnetHdr: tun.headroom > 0,
        },
        tun.headroom > 0
          ? `TUN offloads: ${offloadNames(tun.offload).join(', ') || 'none accepted'}`
          : 'TUN offloads off (tun.offloads "off")',
      );
      if (!host.adopting) await host.apply(hostPlanFromConfig(cfg, tun.name));

      // The records live in a file-backed mapping (src/state/flow-file.ts); a
      // previous daemon's are read back first, and the new file replaces the
      // old one only once it holds the flows taken over.
      const flowsFile = flowsFileFor(cfg);
      const previous = host.adopting ? readFlowFile(flowsFile) : null;
      const mapped = createFlowFile(flowsFile, cfg.limits.maxFlows, cfg.tun.ipv6);
      this.table = new FlowTable(
        cfg.limits.maxFlows,
        timerTimeouts(cfg),
        undefined,
        cfg.limits.embryonicFlows,
        cfg.tun.ipv6,
        mapped.memory,
      );
      this.rules = rulesFromConfig(cfg);
      this.instances.replaceStatic(this.rules, staticInstancesFromConfig(cfg));
      if (cfg.pool) {
        this.pool = new PortPool(
          cfg.pool.range.lo,
          cfg.pool.range.hi,
          cfg.pool.quarantineMs,
          cfg.pool.waitTimeoutMs,
          monoNow, // quarantine times a next daemon reads (the registry's state)
        );
      }
      this.registry = new Registry(cfg, this.instances, this.pool);
      const registry = this.registry;
      const registryFile = registryFileFor(cfg);
      // The registry before the flows: their instances include the registered ones.
      if (host.adopting) {
        const saved = loadRegistryState(registryFile);
        if (saved.problem !== null)
          this.log.error(
            { event: 'registry_state_refused', problem: saved.problem },
            `the previous daemon's registry state is not usable (${saved.problem}): programs under vpm exec bind again to be found`,
          );
        else if (saved.snapshot !== null) {
          const r = registry.restore(saved.snapshot);
          this.log.info(
            {
              event: 'registry_adopted',
              groups: r.groups.map((g) => `${g.aid} ${g.proto}/${g.vport} → ${g.port}`),
              droppedGroups: r.droppedGroups.map(
                (g) => `${g.aid} ${g.proto}/${g.vport}: ${g.reason}`,
              ),
              droppedRegistrations: r.droppedRegistrations.map(
                (x) => `${x.aid} pid ${x.pid}: ${x.reason}`,
              ),
              udpReports: r.udpReports.restored,
              released: r.released,
            },
            `took over ${r.groups.length} registered instances of programs under vpm exec`,
          );
        }
      }
      // Held ports are written before a bind is answered: a port a program was
      // given is never handed out twice. UDP reports alone, which a program may
      // make per datagram socket, are written at most every REPORTS_WRITE_MS.
      let pending: NodeJS.Timeout | null = null;
      const write = () => {
        if (pending !== null) clearTimeout(pending);
        pending = null;
        try {
          saveRegistryState(registryFile, registry.snapshot());
        } catch (e) {
          this.log.error(
            { event: 'registry_state_write_failed', file: registryFile, err: (e as Error).message },
            'could not write the registry state: after a crash, programs under vpm exec bind again to be found',
          );
        }
      };
      this.flushRegistry = () => {
        if (pending !== null) write();
      };
      registry.onChange((what) => {
        if (what === 'ports') write();
        else if (pending === null) {
          pending = setTimeout(write, REPORTS_WRITE_MS);
          pending.unref();
        }
      });
      write();
      if (previous !== null) {
        if (previous.problem !== null)
          this.log.error(
            { event: 'state_refused', file: flowsFile, problem: previous.problem },
            `the previous daemon's flow state is not usable (${previous.problem}): its connections are not taken over`,
          );
        const r = recoverFlows(previous, {
          table: this.table,
          rules: this.rules,
          instances: this.instances,
          names: adopted?.names ?? null,
          now: monoNow(),
        });
        this.recovered = r;
        this.log.info(
          {
            event: 'state_adopted',
            tun: tun.name,
            previousPid: adopted?.pid,
            flows: r.restored,
            dropped: r.dropped,
            skipped: previous.skipped,
            refused: previous.problem,
          },
          `took over the previous daemon's TUN, host state and ${r.restored} flows`,
        );
      }
      mapped.commit();
      host.setNames(indexNames(cfg));
      this.counters = new Counters(Math.max(1, cfg.applications.length));
      const locals = localAddresses();
      locals.add(cfg.tun.address);
      this.pipeline = new Pipeline(
        tun,
        this.table,
        this.rules,
        this.counters,
        {
          instances: this.instances,
          verifyL4Checksum: cfg.tun.verifyChecksums,
          limits: pipelineLimits(cfg),
          health: healthLimits(cfg),
          onInstanceEvent: (ev, index) => this.instanceEvent(ev, index),
          localClientAddr: cfg.tun.localClientAddress,
          localClientAddr6: cfg.tun.ipv6 ? ipv6Words(cfg.tun.localClientAddress6) : null,
          localClientAid: (addr, port, proto) =>
            this.registry?.localClientAid(addr, port, proto) ?? -1,
          localClientAid6: (addr, port, proto) =>
            this.registry?.localClientAid6(addr, port, proto) ?? -1,
          negotiate: (buf, off, len, info, svc, aid, local) =>
            this.coop?.hold(buf, off, len, info, svc, aid, local),
          holdUnknownLocal: cfg.applications.some(
            (a) => a.executables.length > 0 || (a.users !== null && a.users.length > 0),
          ),
          onFlowEvent: (ev, slot, reason, info, buf) => this.flowEvent(ev, slot, reason, info, buf),
          onDeviceEvent: (ev, errno) =>
            this.log.warn(
              {
                event: ev,
                errno,
                offloads: offloadNames(tun.offload),
              },
              'the kernel refused a super-packet: vpm segments in software from now on, and has turned the TUN segmentation offloads off',
            ),
        },
        locals,
      );
      const pipeline = this.pipeline;
      this.setLocalAddrs6(cfg);
      this.coop = new Cooperation(cfg, {
        pipeline,
        table: this.table,
        rules: () => this.rules!,
        instances: this.instances,
        log: this.log,
        now: () => monoNow(),
        localClientAid: (addr, port, proto) =>
          this.registry?.localClientAid(addr, port, proto) ?? -1,
        localClientAid6: (addr, port, proto) =>
          this.registry?.localClientAid6(addr, port, proto) ?? -1,
        aidOfUser: (uid) => this.access.aidOfUser(uid),
      });
      if (this.recovered) this.recovered.p2 = this.coop.adoptFlows();
      tun.start(
        (count) => pipeline.processBatch(count, monoNow()),
        (err) => {
          this.log.fatal(
            { event: 'tun_error', code: err.code, err: err.message },
            'TUN device failed',
          );
          void this.stop(1);
        },
      );
      // Taking over: packets flow again from here; then the plan is applied over
      // what the previous daemon left, and what it no longer has is removed.
      if (host.adopting) await host.apply(hostPlanFromConfig(cfg, tun.name));
      await this.coop.start();
      this.timer = setInterval(() => this.expire(), EXPIRE_INTERVAL_MS);

      this.control = new ControlServer(cfg.control.socket, () => this.access);
      this.control.onRefused = (cmd, r, peer) =>
        this.log.warn(
          {
            event: 'control_refused',
            cmd,
            code: r.code,
            reason: r.reason,
            uid: peer.uid,
            gid: peer.gid,
            pid: peer.pid,
          },
          `control request refused: ${r.message}`,
        );
      this.control.onWarning = (message) =>
        this.log.warn({ event: 'control_unreachable', detail: message }, message);
      registerControlHandlers(this.control, {
        log: this.log,
        config: () => this.cfg,
        stats: () => this.statsWithDevice(),
        flows: () => this.flows(),
        instances: () => this.instanceViews(),
        reload: () => this.reload(),
        registry: () => this.registry,
        handover: (path) => {
          // Only to the new daemon of this very config: its socket in this run directory.
          if (path !== handoverPathFor(this.cfg))
            throw new HostError(
              'ERR_HOST_STATE',
              `handover path ${path} is not this daemon's (${handoverPathFor(this.cfg)})`,
            );
          setImmediate(() => void this.handOver(path));
          return { ok: true, pid: process.pid };
        },
      });
      await this.control.listen();
      const m = cfg.metrics.listen;
      if (m)
        this.metrics = await serveMetrics(
          buildMetrics(
            () => this.stats(),
            () => this.deviceCounters(),
          ),
          m.address,
          m.port,
        );
    } catch (e) {
      // Over a previous daemon's state, a failed start leaves that state as it found it.
      if (this.host?.adopting) await this.detach();
      else await this.teardown();
      throw e;
    }
    this.log.info(
      {
        event: 'ready',
        tun: this.tun?.name,
        services: cfg.services.map(
          (s) =>
            `${s.name}=${s.protocol}/${serviceAddresses(s)
              .map((a) => (a.includes(':') ? `[${a}]` : a))
              .join(',')}:${s.port}`,
        ),
        control: cfg.control.socket,
        metrics: cfg.metrics.listen
          ? formatEndpoint(cfg.metrics.listen.address, cfg.metrics.listen.port)
          : null,
      },
      'vpm up',
    );
  }

  private flowEvent(
    ev: 'created' | 'refused',
    slot: number,
    reason: number,
    info: PacketInfo,
    buf: Uint8Array,
  ): void {
    if (ev === 'refused') {
      // A scan or a flood of datagrams to a closed port must not flood the log:
      // at most REFUSED_LOGS_PER_SECOND lines a second, then one line saying how
      // many were left out (the counters have them all).
      const now = monoNow();
      if (now - this.refusedWindow >= 1000) {
        if (this.refusedSuppressed > 0)
          this.log.info(
            { event: 'flow_refused_suppressed', count: this.refusedSuppressed },
            'more connections refused than logged',
          );
        this.refusedWindow = now;
        this.refusedLogged = 0;
        this.refusedSuppressed = 0;
      }
      if (this.refusedLogged >= REFUSED_LOGS_PER_SECOND) {
        this.refusedSuppressed++;
        return;
      }
      this.refusedLogged++;
      this.log.info(
        {
          event: 'flow_refused',
          reason: DROP_NAMES[reason],
          protocol: info.protocol === IPPROTO_UDP ? 'udp' : 'tcp',
          client:
            info.version === 6
              ? formatEndpoint(ipv6FromBytes(buf, info.srcOff), info.srcPort)
              : formatEndpoint(info.srcAddr, info.srcPort),
          service:
            info.version === 6
              ? formatEndpoint(ipv6FromBytes(buf, info.dstOff), info.dstPort)
              : formatEndpoint(info.dstAddr, info.dstPort),
        },
        'connection refused',
      );
    } else if (this.log.isLevelEnabled('debug')) {
      this.log.debug(
        { event: 'flow_created', flow: this.flowView(slot, monoNow()) },
        'flow created',
      );
    }
  }

  /** "addr:port" and AID name of an instance, for logs and metrics. */
  private instanceLabels(i: Instance): { aid: string; instance: string } {
    return {
      aid: this.rules?.aidNames[i.aid] ?? `#${i.aid}`,
      instance: instanceEndpoint(i),
    };
  }

  /**
   * The passive health check marked an instance down (it refused a SYN) or up
   * (it accepted one while down). One line per change of state, so at most one
   * instance_down per instance per health.downMs.
   */
  private instanceEvent(ev: 'down' | 'up', index: number): void {
    const i = this.instances.get(index);
    if (!i) return;
    const h = this.instances.health(index, monoNow());
    if (ev === 'down')
      this.log.warn(
        {
          event: 'instance_down',
          ...this.instanceLabels(i),
          source: i.source,
          downMs: this.cfg.health.downMs,
          refusals: h.refusals,
        },
        'an instance refused a connection (nothing listening): no new connections for health.downMs',
      );
    else
      this.log.info(
        { event: 'instance_up', ...this.instanceLabels(i), reason: 'accepted' },
        'an instance marked down accepted a connection: up again',
      );
  }

  /** `vpm instances`: the registry's list with each instance's health. */
  instanceViews(): InstanceView[] {
    const list = this.registry?.instances() ?? [];
    const now = monoNow();
    const wall = Date.now();
    return list.map((v) => {
      const addr = parseAddr(v.address);
      const i =
        addr === null
          ? undefined
          : typeof addr === 'bigint'
            ? this.instances.byAddress6(ipv6Words(addr), v.port)
            : this.instances.byAddress(addr, v.port);
      if (!i) return v;
      const h = this.instances.health(i.index, now);
      return {
        ...v,
        health: {
          state: h.up ? 'up' : 'down',
          downUntil: h.up ? null : new Date(wall + (h.downUntil - now)).toISOString(),
          downForMs: h.up ? 0 : Math.ceil(h.downUntil - now),
          refusals: h.refusals,
        },
      };
    });
  }

  private expire(): void {
    const table = this.table;
    const counters = this.counters;
    if (!table || !counters) return;
    const now = monoNow();
    this.pipeline?.expireFragments(now);
    this.instances.healthTick(now, (i) =>
      this.log.info(
        { event: 'instance_up', ...this.instanceLabels(i), reason: 'down_time_over' },
        'an instance marked down gets new connections again (health.downMs over)',
      ),
    );
    // Registrations taken over from a previous daemon have no connection to end
    // them: they end when their process does (pid and start time).
    this.registry?.sweep();
    const debug = this.log.isLevelEnabled('debug');
    counters.flowsExpired += table.expire(now, EXPIRE_BUDGET, (s) => {
      if (debug)
        this.log.debug({ event: 'flow_expired', flow: this.flowView(s, now) }, 'flow expired');
    });
  }

  flowView(s: number, now: number): FlowView {
    const t = this.table!;
    const svc = this.rules!.services[t.service[s]!];
    const e = flowEndpoints(t, s);
    return {
      id: t.id[s]!,
      protocol: t.proto[s] === IPPROTO_UDP ? 'udp' : 'tcp',
      client: e.client,
      service: e.service,
      serviceName: svc?.name ?? '?',
      aid: this.rules!.aidNames[t.aid[s]!] ?? '?',
      real: e.real,
      nat: e.nat,
      state: STATE_NAMES[t.state[s]!] ?? '?',
      ageMs: Math.round(now - t.created[s]!),
      idleMs: Math.round(now - t.lastSeen[s]!),
      packetsIn: t.pktsIn[s]!,
      bytesIn: t.bytesIn[s]!,
      packetsOut: t.pktsOut[s]!,
      bytesOut: t.bytesOut[s]!,
    };
  }

  flows(): FlowView[] {
    const now = monoNow();
    const out: FlowView[] = [];
    this.table?.forEach((s) => {
      out.push(this.flowView(s, now));
    });
    return out.sort((a, b) => a.id - b.id);
  }

  stats(): Record<string, unknown> {
    const c = this.counters!;
    const snap = c.snapshot(this.rules!.aidNames);
    const now = monoNow();
    return {
      ...snap,
      health: {
        ...(snap.health as Record<string, number>),
        synCopiesInUse: this.pipeline?.synCopiesInUse ?? 0,
        instances: this.instances.all().map((i) => {
          const h = this.instances.health(i.index, now);
          return { ...this.instanceLabels(i), up: h.up, refusals: h.refusals };
        }),
      },
      flowsActive: this.table!.size,
      udpFlowsActive: this.table!.udpSize,
      flowsCapacity: this.table!.capacity,
      flowsEmbryonic: this.table!.embryonicSize,
      embryonicCapacity: this.table!.embryonicLimit,
      embryonicEvicted: this.table!.embryonicEvicted,
      uptimeMs: Date.now() - this.startedAt,
      tun: {
        name: this.tun?.name,
        offloads: offloadNames(this.tun?.offload ?? 0),
        segmentingInSoftware: this.pipeline?.segmentingInSoftware ?? false,
        ...this.tun?.stats(),
      },
      pool: this.pool?.stats() ?? null,
      // What this daemon took over from the previous one at start (null: a fresh start).
      recovered: this.recovered,
      control: this.control?.stats(),
      cooperative: this.cfg.cooperative ? this.coop?.stats() : null,
    };
  }

  /** The TUN's own counters, kept by the kernel (device-counters.ts); null if unreadable. */
  deviceCounters() {
    return this.tun ? readDeviceCounters(this.tun.name) : Promise.resolve(null);
  }

  /**
   * `vpm stats`: vpm's counters and, beside them, the device's, read from the
   * kernel (packets dropped before vpm could read them are counted only there).
   */
  async statsWithDevice(): Promise<Record<string, unknown>> {
    const device = await this.deviceCounters();
    return { ...this.stats(), device };
  }

  /**
   * Re-read the config file; new rules apply to new connections. Reloads run one
   * at a time, in the order they were asked for (SIGHUP, the control command).
   */
  reload(): Promise<ReloadResult> {
    const r = this.reloading.then(() => this.reloadNow());
    this.reloading = r.then(
      () => {},
      () => {},
    );
    return r;
  }

  /**
   * The pipeline's local IPv6 addresses (localAddrs6 / localAddrs6Count of the
   * IPv6 contract, set like localAddrs), when the config uses IPv6.
   */
  private setLocalAddrs6(cfg: Config): void {
    if (!this.pipeline || !cfg.tun.ipv6) return;
    const { localAddrs6, localAddrs6Count } = localAddresses6(cfg.tun.address6);
    this.pipeline.localAddrs6 = localAddrs6;
    this.pipeline.localAddrs6Count = localAddrs6Count;
  }

  private async reloadNow(): Promise<ReloadResult> {
    const next = loadConfig(this.cfg.source);
    const refused = ipv6ReloadProblem(this.cfg, next);
    if (refused !== null) throw new ConfigError('ERR_CONFIG_INVALID', next.source, [refused]);
    const plan = reloadPlan(this.cfg, next);
    // Users and groups by name: a name this host does not know fails the reload, before any change.
    const access = AccessPolicy.fromConfig(plan.config);
    if (plan.needsRestart.length > 0) {
      this.log.warn(
        { event: 'reload_partial', needsRestart: plan.needsRestart },
        'some settings take effect only after a restart',
      );
    }
    // The host commands run while packets flow (host/setup.ts): the rules below are
    // still the old ones until they are done, and then change in one step.
    if (this.host && this.tun)
      await this.host.updateReplyPorts(hostPlanFromConfig(next, this.tun.name));
    // Rules and static instances change together, before the next packet: a SYN
    // never sees the services of one configuration with the instances of another.
    // The instances registered by programs under vpm exec stay.
    this.rules = rulesFromConfig(next);
    this.instances.replaceStatic(this.rules, staticInstancesFromConfig(next));
    this.registry?.rebind({ ...next, pool: this.cfg.pool });
    if (this.pipeline) {
      this.pipeline.rules = this.rules;
      const locals = localAddresses();
      locals.add(this.cfg.tun.address);
      this.pipeline.localAddrs = locals;
      this.setLocalAddrs6(this.cfg);
    }
    this.table?.timeouts.set(timerTimeouts(next));
    // New flows get this config's indexes: a next daemon maps them by these names.
    this.host?.setNames(indexNames(next));
    this.cfg = plan.config;
    this.access = access;
    this.pipeline?.setLimits(pipelineLimits(this.cfg));
    this.pipeline?.setHealth(this.cfg.health.downMs);
    // A shorter (or no) health.downMs applies to the instances marked down now too.
    if (this.cfg.health.downMs === 0) this.instances.clearHealth();
    else this.instances.capDown(monoNow() + this.cfg.health.downMs);
    this.coop?.update(this.cfg);
    this.log.info(
      { event: 'reloaded', file: next.source, changed: plan.changed },
      'configuration reloaded',
    );
    return {
      ok: true,
      services: next.services.length,
      applications: next.applications.length,
      selectors: next.selectors.length,
    };
  }

  /** Stop serving: timers, peers, metrics, the control socket. The TUN and the host state are the caller's. */
  private async closeServices(): Promise<void> {
    this.flushRegistry();
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.pool?.close();
    try {
      await this.coop?.close();
    } catch (e) {
      this.log.error(
        { event: 'shutdown_error', err: (e as Error).message },
        'closing the peer channels failed',
      );
    }
    this.coop = null;
    const m = this.metrics;
    this.metrics = null;
    if (m) await new Promise<void>((resolve) => m.close(() => resolve()));
    try {
      await this.control?.close();
    } catch (e) {
      this.log.error(
        { event: 'shutdown_error', err: (e as Error).message },
        'closing the control socket failed',
      );
    }
    this.control = null;
  }

  /** Undo everything: the TUN is deleted, the host state undone, the state files removed. */
  private async teardown(): Promise<void> {
    await this.closeServices();
    try {
      // Not persistent any more: the close deletes the device (the journal's link entry finds it gone).
      this.tun?.setPersist(false);
    } catch (e) {
      this.log.error(
        { event: 'shutdown_error', err: (e as Error).message },
        'making the TUN non-persistent failed',
      );
    }
    this.tun?.close();
    this.tun = null;
    try {
      await this.host?.undo();
    } catch (e) {
      this.log.error(
        { event: 'shutdown_error', err: (e as Error).message },
        'undoing host changes failed',
      );
    }
    if (this.host) {
      rmSync(flowsFileFor(this.cfg), { force: true });
      rmSync(registryFileFor(this.cfg), { force: true });
    }
    this.host = null;
  }

  /**
   * Leave without undoing anything (`--keep-state`, or a start that failed
   * over a previous daemon's state): the persistent TUN, its routes, the host
   * journal and the state files stay for the next `vpm up` to take over. The
   * flow records are in their file already (a shared mapping).
   */
  private async detach(): Promise<void> {
    await this.closeServices();
    this.tun?.close();
    this.tun = null;
    this.host = null;
  }

  /**
   * `vpm restart`, the new daemon's side: ask the one running with this config
   * (control command `handover`) for its TUN, receive the fd, and wait until
   * that daemon has exited (its control socket and peer port are free then).
   * Null when no daemon runs. Throws when the running one does not hand over.
   */
  private async takeOver(
    cfg: Config,
    stateFile: string,
  ): Promise<{ fd: number; vnetHdr: boolean; offload: number; pid: number } | null> {
    let j: ReturnType<typeof readJournal> = null;
    try {
      j = readJournal(stateFile);
    } catch {
      // unreadable: the plain start reports it
    }
    if (j === null || !journalOwnerAlive(j) || !(await socketAnswers(cfg.control.socket))) {
      this.log.info(
        { event: 'restart_no_daemon' },
        'vpm restart: no daemon runs with this config; starting (over any state a crashed one left)',
      );
      return null;
    }
    const path = handoverPathFor(cfg);
    const l = listenForHandover(path);
    try {
      const t0 = monoNow();
      await controlRequest(cfg.control.socket, 'handover', { path }, HANDOVER_TIMEOUT_MS);
      const got = l.receive(HANDOVER_TIMEOUT_MS);
      const meta = got.meta as { pid?: number; vnetHdr?: unknown; offload?: unknown };
      if (typeof meta.vnetHdr !== 'boolean' || typeof meta.offload !== 'number') {
        closeFd(got.fd);
        throw new HostError(
          'ERR_HOST_STATE',
          `the running daemon's handover says ${JSON.stringify(got.meta)}: no TUN flags`,
        );
      }
      while (pidAlive(j.pid) && monoNow() - t0 < 2 * HANDOVER_TIMEOUT_MS)
        await new Promise((r) => setTimeout(r, 5));
      this.log.info(
        { event: 'handover_received', previousPid: j.pid, ms: Math.round(monoNow() - t0) },
        'the running daemon handed its TUN over',
      );
      return { fd: got.fd, vnetHdr: meta.vnetHdr, offload: meta.offload, pid: j.pid };
    } finally {
      l.close();
    }
  }

  /**
   * The running daemon's side of `vpm restart` (control command `handover`):
   * stop reading, stop serving, hand the TUN's fd to the new daemon at `path`
   * and exit without undoing anything: the new one takes the host state and the
   * flows over. Packets that arrive meanwhile wait in the TUN's queue.
   */
  private async handOver(path: string): Promise<void> {
    if (this.stopping || !this.tun) return;
    this.stopping = true;
    const tun = this.tun;
    tun.stop();
    this.log.info({ event: 'handing_over', to: path }, 'vpm restart: handing the TUN over');
    await this.closeServices();
    try {
      sendHandover(
        path,
        tun.fd(),
        { pid: process.pid, ...tunHandoverInfo(tun) },
        HANDOVER_TIMEOUT_MS,
      );
    } catch (e) {
      this.log.error(
        { event: 'handover_failed', err: (e as Error).message },
        'the handover failed: exiting with the state kept, for the next vpm up to take over',
      );
    }
    tun.close();
    this.tun = null;
    this.host = null;
    this.log.flush?.();
    process.exit(0);
  }

  /** Undo everything (or, with keepState, leave it for the next daemon) and exit with `code`. */
  async stop(code = 0): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const keep = this.opts.keepState === true && code === 0;
    this.log.info(
      { event: 'stopping', code, keepState: keep },
      keep
        ? 'vpm stopping: the TUN, host state and flows stay for the next vpm up (vpm down removes them)'
        : 'vpm down',
    );
    if (keep) await this.detach();
    else await this.teardown();
    this.log.flush?.();
    process.exit(code);
  }

  installSignals(): void {
    process.on('SIGINT', () => void this.stop(0));
    process.on('SIGTERM', () => void this.stop(0));
    process.on('SIGHUP', () => {
      this.reload().catch((e: unknown) => {
        this.log.error(
          { event: 'reload_failed', err: (e as Error).message },
          'reload failed; keeping the old configuration',
        );
      });
    });
  }
}
