/**
 * The pipeline under fuzzing: a Pipeline over a MemoryTun with virtio-net headers
 * (offloads on), configured with a TCP and a UDP service on the same VIP:port
 * (the configuration of test/datapath/robustness-udp.test.ts), and the invariants
 * checked after every batch. Shared by the coverage-guided target
 * (targets/pipeline.ts) and the plain random/mutation run (scripts/fuzz-packets.ts).
 *
 * A broken invariant is thrown as an Error: to the fuzzer, a crash.
 */

import { Counters, DROP_NAMES } from '../../src/datapath/counters.js';
import { InstanceSet } from '../../src/datapath/instances.js';
import { Pipeline, type PipelineLimits } from '../../src/datapath/pipeline.js';
import { Rules } from '../../src/datapath/rules.js';
import { FlowTable } from '../../src/flow/table.js';
import { MemoryTun } from '../../src/tun/memory-tun.js';
import { CHECK_NAMES, Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';

const PROTO_TCP = 6;
const PROTO_UDP = 17;

function ip4(s: string): number {
  const [a, b, c, d] = s.split('.').map(Number) as [number, number, number, number];
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

export const VIP = ip4('198.19.0.9');
export const VPORT = 9000;
/** The instances' address (the TUN address). */
export const HOST = ip4('198.19.255.1');
export const LOCAL_CLIENT = ip4('198.19.255.2');
export const NET_A = ip4('198.18.1.0');
export const NET_B = ip4('198.18.2.0');
export const NET_C = ip4('198.18.3.0');
/** Instances: tenant a on 19001 (TCP and UDP), tenant b on 19002. */
export const PORT_A = 19001;
export const PORT_B = 19002;

const LIMITS: PipelineLimits = {
  heldFragments: 24,
  heldFragmentBytes: 12_000,
  fragmentMs: 1500,
  icmpPerSecond: 400,
};
/** embryonic, established, closing, linger, UDP unreplied, UDP assured (ms). */
const TIMEOUTS = [4000, 30_000, 3000, 2000, 1000, 8000];

function rules(): Rules {
  const all = { portLo: 0, portHi: 65535 };
  const mask24 = Uint32Array.of(0xffffff00);
  return new Rules({
    services: [
      { name: 'web', addr: VIP, addr6: null, port: VPORT, proto: PROTO_TCP, peer: -1 },
      { name: 'dns', addr: VIP, addr6: null, port: VPORT, proto: PROTO_UDP, peer: -1 },
    ],
    selectors: [
      {
        service: -1,
        cidrBase: Uint32Array.of(NET_A),
        cidrMask: mask24,
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        ...all,
        aid: 0,
      },
      {
        service: -1,
        cidrBase: Uint32Array.of(HOST),
        cidrMask: Uint32Array.of(0xffffffff),
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        ...all,
        aid: 0,
      },
      {
        service: -1,
        cidrBase: Uint32Array.of(NET_B),
        cidrMask: mask24,
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        portLo: 1024,
        portHi: 65535,
        aid: 1,
      },
      {
        service: 1,
        cidrBase: Uint32Array.of(NET_C),
        cidrMask: mask24,
        cidr6Words: new Uint32Array(0),
        anyClient: false,
        ...all,
        aid: 1,
      },
    ],
    aidNames: ['tenant-a', 'tenant-b'],
    defaultAid: -1,
  });
}

function instances(r: Rules): InstanceSet {
  const set = new InstanceSet();
  set.replaceStatic(r, [
    { aid: 0, addr: HOST, addr6: null, port: PORT_A, service: 0, vport: 0 },
    { aid: 0, addr: HOST, addr6: null, port: PORT_A, service: 1, vport: 0 },
    // Two instances of tenant b: round robin, SYN copies, the health check's retry.
    { aid: 1, addr: HOST, addr6: null, port: PORT_B, service: -1, vport: 0 },
    { aid: 1, addr: HOST, addr6: null, port: PORT_B + 1, service: -1, vport: 0 },
  ]);
  return set;
}

export const EINVAL = 22;

export interface HarnessOptions {
  /** Flow table capacity. Default 64 (small: slots are reused, the table fills). */
  capacity?: number;
  /** Packets per batch. Default 16. */
  batchSize?: number;
  /** Seed of the flow table's hash. Default 1. */
  seed?: number;
}

/** One pipeline and its device; `reset()` starts again from an empty state. */
export class PipelineHarness {
  readonly tun: MemoryTun;
  counters!: Counters;
  pipeline!: Pipeline;
  table!: FlowTable;
  instances!: InstanceSet;
  now = 10_000;
  /** Refuse packets written (EINVAL) while set: every one, or only plain ones (see refuseSuper). */
  refuseWrites = false;
  /**
   * With refuseWrites, refuse super-packets too (the default). The first refused
   * super-packet turns segmentation over to vpm for the pipeline's life.
   */
  refuseSuper = true;
  private readonly opts: Required<HarnessOptions>;
  private readonly info = new PacketInfo();
  private checkedOut = 0;

  constructor(opts: HarnessOptions = {}) {
    this.opts = { capacity: 64, batchSize: 16, seed: 1, ...opts };
    this.tun = new MemoryTun({ batchSize: this.opts.batchSize, vnetHdr: true });
    // frame[1]: the virtio-net header's gso_type (0: a plain packet).
    this.tun.refuse = (frame) =>
      this.refuseWrites && (this.refuseSuper || frame[1] === 0) ? EINVAL : 0;
    this.reset();
  }

  reset(): void {
    this.tun.stop();
    this.tun.written.length = 0;
    this.checkedOut = 0;
    this.refuseWrites = false;
    this.now = 10_000;
    this.table = new FlowTable(this.opts.capacity, TIMEOUTS, this.opts.seed);
    this.counters = new Counters(2);
    const r = rules();
    this.instances = instances(r);
    this.pipeline = new Pipeline(
      this.tun,
      this.table,
      r,
      this.counters,
      {
        instances: this.instances,
        verifyL4Checksum: true,
        limits: LIMITS,
        localClientAddr: LOCAL_CLIENT,
      },
      new Set([HOST]),
    );
    this.readBase = this.tun.stats().readPackets;
    this.tun.start((n) => this.pipeline.processBatch(n, this.now));
  }

  private readBase = 0;

  /** Frames (virtio-net header + packet) in, as one or more batches (of at most batchSize). */
  inject(frames: readonly Uint8Array[]): void {
    this.tun.inject(frames);
    this.check('after a batch');
  }

  /** What the daemon's timer does: expire flows and held fragments. */
  expire(): void {
    this.counters.flowsExpired += this.table.expire(this.now, 1 << 20, () => {});
    this.pipeline.expireFragments(this.now);
    this.instances.healthTick(this.now, () => {});
    this.check('after expiry');
  }

  /**
   * The invariants: every packet read was counted in, packetsIn = packetsOut +
   * drops + fragmentsHeld, and every packet written is IPv4 that checkPacket accepts.
   */
  check(where: string): void {
    const c = this.counters;
    const read = this.tun.stats().readPackets - this.readBase;
    if (c.packetsIn !== read)
      throw new Error(`invariant (${where}): packetsIn ${c.packetsIn} but ${read} packets read`);
    const drops = c.dropTotal();
    if (c.packetsIn !== c.packetsOut + drops + c.fragmentsHeld)
      throw new Error(
        `invariant (${where}): packetsIn ${c.packetsIn} != packetsOut ${c.packetsOut} + drops ${drops} + fragmentsHeld ${c.fragmentsHeld}`,
      );
    const w = this.tun.written;
    for (let i = this.checkedOut; i < w.length; i++) {
      const f = w[i]!;
      const r = checkPacket(f, 10, f.length - 10, this.info);
      if (r !== Check.OK || this.info.version !== 4)
        throw new Error(
          `invariant (${where}): a packet written does not pass checkPacket: ${CHECK_NAMES[r]}`,
        );
    }
    // Keep memory flat: what was checked is not needed any more.
    w.length = 0;
    this.checkedOut = 0;
  }

  /** Drops by reason name (those not 0). */
  dropsByReason(): Record<string, number> {
    const out: Record<string, number> = {};
    for (let i = 0; i < DROP_NAMES.length; i++) {
      const n = this.counters.drops[i]!;
      if (n > 0) out[DROP_NAMES[i]!] = n;
    }
    return out;
  }
}
