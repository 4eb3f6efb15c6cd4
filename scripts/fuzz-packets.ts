/**
 * npm run fuzz:packets -- [N] [--seed S]: a plain random/mutation run of N packets
 * (default 10,000,000) through the pipeline, in batches, on a MemoryTun with
 * virtio-net headers (scripts/fuzz/harness.ts: a TCP and a UDP service, the
 * invariants checked after every batch). Not coverage-guided: seeded and
 * deterministic (the clock is simulated), so a failure is replayed by the same
 * command with the printed seed.
 *
 * The packets: a pool of valid ones built by the test builders (TCP handshakes,
 * data, FINs and RSTs both ways, partial checksums, super-packets, UDP both ways,
 * ICMP echoes and errors quoting vpm's packets, IPv4 fragments, closed ports, no
 * service; the same over IPv6 — behind random extension header chains, with
 * ICMPv6 packet too big and echo, fragment headers, TSO6, neighbour discovery
 * and MLD chatter) for a few dozen clients; each packet is one of the pool as it
 * is (40%) or mutated (bytes flipped, cut, grown, an IP length or IHL or the
 * protocol changed, a hostile virtio-net header, or all garbage). The clock
 * moves between batches (sometimes past every timeout), the daemon's timer runs
 * every 256 batches, and some batches meet a device that refuses writes (plain
 * packets only for the first 90% of the run, super-packets too after that).
 *
 * Prints packets/s, the counters and the drops by reason. On a crash (an
 * exception, a broken invariant) it prints the seed, the batch and the error,
 * writes the batch to tmp/fuzz/packets-crash-<seed>-<batch>.bin (pipeline
 * target's record format: `npx jazzer dist/scripts/fuzz/targets/pipeline.js
 * <file>` replays it on a fresh pipeline) and exits 1.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import {
  VNET_F_DATA_VALID,
  VNET_F_NEEDS_CSUM,
  VNET_GSO_TCPV4,
  VNET_GSO_TCPV6,
  VNET_GSO_UDP_L4,
} from '../src/wire/virtio.js';
import {
  icmp,
  icmp4,
  icmp6,
  ip4,
  ip6,
  ipv4,
  ipv6x,
  randomExt6,
  tcp4,
  tcp4Partial,
  tcp6,
  tcp6Partial,
  tcp6x,
  udp,
  udp4,
  udp6Fragments,
  udp6x,
  vnetHdr,
} from '../test/support/builder.js';
import { Rng } from '../test/support/rng.js';
import {
  HOST,
  HOST6,
  LOCAL_CLIENT,
  LOCAL_CLIENT6,
  PipelineHarness,
  PORT_A,
  PORT_B,
  VIP,
  VIP6,
  VPORT,
} from './fuzz/harness.js';

/** The 4 words of an IPv6 address as its 16 bytes. */
function bytes6(w: Uint32Array): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  for (let i = 0; i < 4; i++) v.setUint32(4 * i, w[i]!);
  return b;
}

const SYN = 0x02;
const ACK = 0x10;
const FIN = 0x01;
const RST = 0x04;
const PSH = 0x08;

/**
 * The segments of one TCP connection of the pool: `t` client → VIP:VPORT, `r`
 * the instance's replies (real port → client), each with its flags and `data`
 * payload bytes (from `payload`).
 */
function segments(
  cport: number,
  real: number,
  seq: number,
  sseq: number,
  payload: (n: number) => Uint8Array,
) {
  const seg =
    (srcPort: number, dstPort: number, s: number, ack: number) =>
    (flags: number, data = 0) => ({
      srcPort,
      dstPort,
      seq: s,
      ack,
      flags,
      payload: payload(data),
    });
  return { t: seg(cport, VPORT, seq, sseq + 1), r: seg(real, cport, sseq, seq + 1) };
}

function parseArgs(argv: string[]): { n: number; seed: number } {
  let n = 10_000_000;
  let seed = 1;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--seed') seed = Number(argv[++i]);
    else n = Number(a.replaceAll('_', ''));
  }
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`fuzz-packets: N must be a positive integer, got ${n}`);
  if (!Number.isInteger(seed))
    throw new Error(`fuzz-packets: --seed must be an integer, got ${seed}`);
  return { n, seed: seed >>> 0 };
}

/** The pool of valid frames (virtio-net header + packet). */
export function pool(rng: Rng): Uint8Array[] {
  const out: Uint8Array[] = [];
  const frame = (hdr: Uint8Array, pkt: Uint8Array) => {
    const f = new Uint8Array(hdr.length + pkt.length);
    f.set(hdr);
    f.set(pkt, hdr.length);
    out.push(f);
  };
  const plain = vnetHdr();
  const valid = vnetHdr({ flags: VNET_F_DATA_VALID });
  const partial = vnetHdr({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 16 });
  const clients = [
    ...Array.from({ length: 8 }, (_, i) => ip4(`198.18.1.${i + 2}`)), // tenant a
    ...Array.from({ length: 6 }, (_, i) => ip4(`198.18.2.${i + 2}`)), // tenant b (ports >= 1024)
    ip4('198.18.3.2'), // tenant b, UDP only
    ip4('198.18.200.1'), // no selector
    HOST, // a local client
  ];
  const payload = (n: number) => {
    const b = new Uint8Array(n);
    rng.fill(b);
    return b;
  };
  for (const c of clients) {
    const nat = c === HOST ? LOCAL_CLIENT : c;
    for (const cport of [1000, 40000, 40001, 50000]) {
      const real =
        c >>> 8 === ip4('198.18.1.0') >>> 8 || c === HOST
          ? PORT_A
          : rng.int(2)
            ? PORT_B
            : PORT_B + 1;
      const seq = rng.u32();
      const sseq = rng.u32();
      const up = { src: c, dst: VIP, ident: rng.int(0x10000) };
      const down = { src: HOST, dst: nat, ident: rng.int(0x10000) };
      const { t, r } = segments(cport, real, seq, sseq, payload);
      frame(plain, tcp4(up, { ...t(SYN), ack: 0 }));
      frame(plain, tcp4(down, r(SYN | ACK)));
      frame(plain, tcp4(up, t(ACK)));
      frame(plain, tcp4(up, t(ACK | PSH, 1 + rng.int(200))));
      frame(partial, tcp4Partial(up, t(ACK | PSH, 1 + rng.int(200))));
      frame(valid, tcp4(down, r(ACK | PSH, 1 + rng.int(300))));
      frame(plain, tcp4(up, t(FIN | ACK)));
      frame(plain, tcp4(down, r(FIN | ACK)));
      frame(plain, tcp4(down, r(RST | ACK)));
      frame(plain, tcp4(up, t(RST)));
      // A TCP super-packet (TSO) with a partial checksum.
      const gsoSize = 100 + rng.int(1300);
      frame(
        vnetHdr({
          flags: VNET_F_NEEDS_CSUM,
          gsoType: VNET_GSO_TCPV4,
          hdrLen: 40,
          gsoSize,
          csumStart: 20,
          csumOffset: 16,
        }),
        tcp4Partial(up, t(ACK, gsoSize * (2 + rng.int(4)))),
      );
      // UDP both ways, a UDP super-packet (USO) from the instance.
      const u = { srcPort: cport, dstPort: VPORT, payload: payload(rng.int(100)) };
      frame(plain, udp4(up, u, rng.int(4) !== 0));
      frame(plain, udp4(down, { srcPort: real, dstPort: cport, payload: payload(rng.int(100)) }));
      const usz = 200 + rng.int(800);
      frame(
        vnetHdr({ flags: VNET_F_DATA_VALID, gsoType: VNET_GSO_UDP_L4, hdrLen: 28, gsoSize: usz }),
        udp4(down, { srcPort: real, dstPort: cport, payload: payload(usz * 3) }),
      );
      // ICMP: an echo to the VIP, errors quoting what vpm sent to the client and to the server.
      frame(plain, icmp4(up, { type: 8, rest: rng.u32(), data: payload(16) }));
      const toClient = tcp4(
        { src: VIP, dst: c },
        { srcPort: VPORT, dstPort: cport, seq: sseq, flags: SYN | ACK },
      );
      frame(
        plain,
        icmp4(
          { src: ip4('198.18.0.254'), dst: VIP },
          { type: 3, code: 4, rest: 1400, data: toClient.subarray(0, 28) },
        ),
      );
      const toServer = udp4(
        { src: nat, dst: HOST },
        { srcPort: cport, dstPort: real, payload: payload(8) },
      );
      frame(plain, icmp4({ src: HOST, dst: nat }, { type: 3, code: 3, data: toServer }));
      // A UDP datagram in fragments (first, later, in either order).
      const l4 = udp(
        { srcPort: cport, dstPort: VPORT, payload: payload(64) },
        { v: 4, src: c, dst: VIP },
      );
      const ipf = { src: c, dst: VIP, protocol: 17, ident: rng.int(64), df: false };
      frame(plain, ipv4({ ...ipf, mf: true }, l4.subarray(0, 24)));
      frame(plain, ipv4({ ...ipf, fragOffset: 24, mf: true }, l4.subarray(24, 48)));
      frame(plain, ipv4({ ...ipf, fragOffset: 48 }, l4.subarray(48)));
      // Closed port, another VIP, another protocol.
      frame(plain, tcp4(up, { srcPort: cport, dstPort: 81, flags: SYN }));
      frame(plain, udp4({ ...up, dst: ip4('198.19.0.77') }, { srcPort: cport, dstPort: VPORT }));
      frame(plain, ipv4({ ...up, protocol: 47 }, payload(20)));
    }
  }
  // IPv6: the same flows, behind random extension header chains now and then.
  const vip6 = bytes6(VIP6);
  const host6 = bytes6(HOST6);
  const lc6 = bytes6(LOCAL_CLIENT6);
  const clients6 = [
    ...Array.from({ length: 6 }, (_, i) => ip6(`2001:2:0:a::${i + 2}`)), // tenant a
    ...Array.from({ length: 4 }, (_, i) => ip6(`2001:2:0:b::${i + 2}`)), // tenant b (ports >= 1024)
    ip6('2001:2:0:c8::1'), // no selector
    host6, // a local client
  ];
  const partial6 = vnetHdr({ flags: VNET_F_NEEDS_CSUM, csumStart: 40, csumOffset: 16 });
  for (const c of clients6) {
    const nat = c === host6 ? lc6 : c;
    const tenantA = c[7] === 0x0a || c === host6;
    for (const cport of [1000, 40000, 50000]) {
      const real = tenantA ? PORT_A : rng.int(2) ? PORT_B : PORT_B + 1;
      const seq = rng.u32();
      const sseq = rng.u32();
      const up = { src: c, dst: vip6, flowLabel: rng.int(0x100000) };
      const down = { src: host6, dst: nat };
      const ext = () => (rng.int(3) === 0 ? randomExt6(rng, 3) : []);
      const { t, r } = segments(cport, real, seq, sseq, payload);
      frame(plain, tcp6x(up, ext(), { ...t(SYN), ack: 0 }));
      frame(plain, tcp6x(down, ext(), r(SYN | ACK)));
      frame(plain, tcp6(up, t(ACK)));
      frame(plain, tcp6x(up, ext(), t(ACK | PSH, 1 + rng.int(200))));
      frame(partial6, tcp6Partial(up, t(ACK | PSH, 1 + rng.int(200))));
      frame(valid, tcp6(down, r(ACK | PSH, 1 + rng.int(300))));
      frame(plain, tcp6(up, t(FIN | ACK)));
      frame(plain, tcp6(down, r(RST | ACK)));
      const gsoSize = 100 + rng.int(1300);
      frame(
        vnetHdr({
          flags: VNET_F_NEEDS_CSUM,
          gsoType: VNET_GSO_TCPV6,
          hdrLen: 60,
          gsoSize,
          csumStart: 40,
          csumOffset: 16,
        }),
        tcp6Partial(up, t(ACK, gsoSize * (2 + rng.int(4)))),
      );
      const u = { srcPort: cport, dstPort: VPORT, payload: payload(rng.int(100)) };
      frame(plain, udp6x(up, ext(), u));
      frame(
        plain,
        udp6x(down, [], { srcPort: real, dstPort: cport, payload: payload(rng.int(100)) }),
      );
      frame(plain, icmp6(up, { type: 128, rest: rng.u32(), data: payload(16) }));
      // Packet too big from the instance's side about what vpm sent it; time exceeded the other way.
      const toServer = tcp6({ src: nat, dst: host6 }, r(ACK, 1200));
      frame(
        plain,
        icmp6({ src: host6, dst: nat }, { type: 2, rest: 1280, data: toServer.subarray(0, 1232) }),
      );
      const toClient = tcp6({ src: vip6, dst: c }, r(SYN | ACK));
      frame(plain, icmp6({ src: ip6('2001:2:0:99::1'), dst: vip6 }, { type: 3, data: toClient }));
      // A UDP datagram in fragments (a fragment header each).
      for (const f of udp6Fragments(up, { ...u, payload: payload(100) }, 48, rng.u32()))
        frame(plain, f);
      frame(plain, tcp6(up, { srcPort: cport, dstPort: 81, flags: SYN }));
    }
  }
  // Neighbour discovery and MLD chatter, as the kernel sends it on the TUN.
  const ll = ip6('fe80::1');
  frame(plain, icmp6({ src: ll, dst: ip6('ff02::2'), hopLimit: 255 }, { type: 133 }));
  frame(
    plain,
    icmp6({ src: ip6('::'), dst: ip6('ff02::1:ff00:9'), hopLimit: 255 }, { type: 135, data: vip6 }),
  );
  frame(
    plain,
    ipv6x(
      { src: ll, dst: ip6('ff02::16'), hopLimit: 1 },
      [{ type: 0 }],
      58,
      icmp({ type: 143, data: payload(20) }, { v: 6, src: ll, dst: ip6('ff02::16') }),
    ),
  );
  frame(
    plain,
    tcp6(
      { src: ip6('2001:db8::1'), dst: ip6('2001:db8::2') },
      { srcPort: 1, dstPort: 9000, flags: SYN },
    ),
  );
  return out;
}

function put16(b: Uint8Array, i: number, v: number): void {
  b[i] = (v >> 8) & 0xff;
  b[i + 1] = v & 0xff;
}

/** A mutated copy of `f` (frame: 10-byte header + packet). */
export function mutate(rng: Rng, f: Uint8Array, maxLen: number): Uint8Array {
  let b: Uint8Array = f.slice();
  const rounds = 1 + rng.int(3);
  for (let k = 0; k < rounds; k++) {
    switch (rng.int(10)) {
      case 0:
      case 1: {
        // flip 1-4 bytes of the packet
        for (let j = 1 + rng.int(4); j > 0 && b.length > 10; j--) {
          const at = 10 + rng.int(b.length - 10);
          b[at] = b[at]! ^ (1 << rng.int(8));
        }
        break;
      }
      case 2:
        b = b.subarray(0, rng.int(b.length + 1));
        break;
      case 3: {
        const g = new Uint8Array(Math.min(maxLen, b.length + 1 + rng.int(64)));
        g.set(b.subarray(0, g.length));
        for (let i = b.length; i < g.length; i++) g[i] = rng.int(256);
        b = g;
        break;
      }
      case 4: // IPv4 total length, IPv6 payload length
        if (b.length >= 16 && b[10]! >> 4 === 6)
          put16(b, 14, rng.int(3) === 0 ? rng.int(0x10000) : b.length - 50 + rng.int(9) - 4);
        else if (b.length >= 14)
          put16(b, 12, rng.int(3) === 0 ? rng.int(0x10000) : b.length - 10 + rng.int(9) - 4);
        break;
      case 5: // version/IHL
        if (b.length > 10) b[10] = rng.int(3) === 0 ? rng.int(256) : 0x40 | rng.int(16);
        break;
      case 6: // protocol, flags/fragment offset; IPv6: the next header of the header or a chain member
        if (b.length >= 50 && b[10]! >> 4 === 6) {
          const nh = [0, 6, 17, 43, 44, 58, 59, 60, rng.int(256)][rng.int(9)]!;
          if (rng.int(2)) b[16] = nh;
          else b[50 + 8 * rng.int(3)] = nh; // where an extension header's next header may be
          if (b.length > 51 && rng.int(3) === 0) b[51] = rng.int(256); // its length
        } else if (b.length >= 20) {
          if (rng.int(2)) b[19] = [1, 6, 17, 58, rng.int(256)][rng.int(5)]!;
          else put16(b, 16, rng.int(0x10000));
        }
        break;
      case 7: // a hostile virtio-net header
        if (b.length >= 10) {
          b[0] = rng.int(4);
          b[1] = [0, 1, 3, 4, 5, 0x81, rng.int(256)][rng.int(7)]!;
          for (let i = 2; i < 10; i++) if (rng.int(3) === 0) b[i] = rng.int(256);
        }
        break;
      case 8: // an L4 port or a TCP data offset
        if (b.length >= 64 && b[10]! >> 4 === 6) {
          const at = 50 + rng.int(40); // extension headers or the L4 header
          if (at < b.length) b[at] = rng.int(256);
        } else if (b.length >= 44) {
          const ihl = (b[10]! & 0x0f) * 4;
          const at = 10 + ihl + rng.int(14);
          if (at < b.length) b[at] = rng.int(256);
        }
        break;
      default: {
        // all garbage
        const g = new Uint8Array(rng.int(Math.min(maxLen, 2000)));
        rng.fill(g);
        b = g;
      }
    }
  }
  return b;
}

function main(): void {
  const { n, seed } = parseArgs(process.argv.slice(2));
  const rng = new Rng(seed);
  const h = new PipelineHarness({ capacity: 1024, batchSize: 64, seed });
  const frames = pool(rng);
  const maxLen = h.tun.slotSize - 1;
  const t0 = performance.now();
  let sent = 0;
  let batchNo = 0;
  let mutated = 0;
  const batch: Uint8Array[] = [];
  let nextReport = 1_000_000;
  console.log(`fuzz-packets: ${n} packets, seed ${seed}, a pool of ${frames.length} valid frames`);
  while (sent < n) {
    batch.length = 0;
    const size = Math.min(n - sent, 1 + rng.int(64));
    for (let i = 0; i < size; i++) {
      const f = frames[rng.int(frames.length)]!;
      if (rng.int(10) < 4) batch.push(f);
      else {
        batch.push(mutate(rng, f, maxLen));
        mutated++;
      }
    }
    const r = rng.int(1000);
    h.now += r < 600 ? 0 : r < 900 ? rng.int(50) : r < 995 ? rng.int(3000) : 40_000;
    h.refuseWrites = rng.int(200) === 0;
    // Super-packets are refused only in the last tenth: the first refusal turns
    // segmentation over to vpm for good, and whole super-packets out are covered before.
    h.refuseSuper = sent >= n * 0.9;
    try {
      h.inject(batch);
      h.refuseWrites = false;
      if (++batchNo % 256 === 0) h.expire();
    } catch (e) {
      mkdirSync('tmp/fuzz', { recursive: true });
      const file = `tmp/fuzz/packets-crash-${seed}-${batchNo}.bin`;
      const recs: number[] = [];
      for (let i = 0; i < batch.length; i++) {
        const f = batch[i]!;
        recs.push(i === batch.length - 1 ? 0x08 : 0, f.length >> 8, f.length & 0xff, ...f);
      }
      writeFileSync(file, Uint8Array.from(recs));
      console.error(
        `fuzz-packets: CRASH at batch ${batchNo} (packets ${sent}..${sent + size}), seed ${seed}`,
      );
      console.error(
        `  reproduce: npm run fuzz:packets -- ${sent + size} --seed ${seed}; the batch alone: ${file}`,
      );
      console.error(e);
      process.exit(1);
    }
    sent += size;
    if (sent >= nextReport) {
      const s = (performance.now() - t0) / 1000;
      console.log(`  ${sent} packets, ${s.toFixed(1)} s, ${Math.round(sent / s)} packets/s`);
      nextReport += 1_000_000;
    }
  }
  h.now += 40_000;
  h.expire();
  const s = (performance.now() - t0) / 1000;
  const c = h.counters;
  console.log(
    `done: ${sent} packets (${mutated} mutated) in ${batchNo} batches, ${s.toFixed(1)} s, ${Math.round(sent / s)} packets/s, 0 crashes`,
  );
  console.log(
    `counters: packetsIn ${c.packetsIn}, packetsOut ${c.packetsOut}, drops ${c.dropTotal()}, fragmentsHeld ${c.fragmentsHeld}; flows created ${c.flowsCreated}, expired ${c.flowsExpired}; RSTs ${c.rstSent}, ICMP unreachable ${c.icmpUnreachableSent}, echo replies ${c.echoReplies}, ICMP errors translated ${c.icmpErrorsTranslated}; super-packets in ${c.superPacketsIn}, out ${c.superPacketsOut}, segmented in software ${c.softwareSegmented}; fragments released ${c.fragmentsReleased}; SYNs retried ${c.synRetried}`,
  );
  console.log('drops by reason:');
  const drops = Object.entries(h.dropsByReason()).sort((a, b) => b[1] - a[1]);
  for (const [k, v] of drops) console.log(`  ${k.padEnd(28)} ${v}`);
}

// Run as a script (node dist/scripts/fuzz-packets.js), not when a test imports the pool.
if (process.argv[1]?.endsWith('fuzz-packets.js')) main();
