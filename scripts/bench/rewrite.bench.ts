/**
 * Benchmark: a whole rewrite of one TCP/IPv4 packet, as the data plane does it
 * (rewrite.ts: incremental RFC 1624 updates, O(1) in the packet length) against
 * the reference twin (rewrite.reference.ts: write the fields, then recompute the
 * IP header and TCP checksums from scratch with the byte-at-a-time sum).
 *
 *  - port:      destination port only (covered by the TCP checksum, not the IP one)
 *  - addr+port: destination address (IP header and TCP pseudo-header checksums)
 *               and destination port: the VIP:9000 -> instance addr:port rewrite of every
 *               packet a client sends (docs/architecture.md, pipeline)
 *
 * Each iteration flips the packet between two destinations, so every rewrite is a
 * real change and the packet stays valid. The twin of addr+port writes both fields
 * and recomputes once (not once per field), to be fair to it.
 */

import { pseudoHeader4 } from '../../src/checksum/pseudo.js';
import { parseIpv4 } from '../../src/wire/address.js';
import { set16, set32 } from '../../src/wire/bytes.js';
import {
  IPPROTO_TCP,
  IPV4_HEADER_LEN,
  IPV4_OFF_DST,
  Ipv4Packet,
  Ipv4Repr,
} from '../../src/wire/ipv4.js';
import { Check, checkPacket, PacketInfo } from '../../src/wire/parse.js';
import {
  setDstPortWithChecksumUpdate,
  setIpv4DstAddrWithChecksumUpdate,
} from '../../src/wire/rewrite.js';
import { recomputeIpv4Checksums, setDstPortReference } from '../../src/wire/rewrite.reference.js';
import {
  TCP_ACK,
  TCP_OFF_CHECKSUM,
  TCP_OFF_DST_PORT,
  TcpRepr,
  TcpSegment,
} from '../../src/wire/tcp.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import { type BenchCase, fillRandom, fmtNs } from './common.js';
import type { Loop, Measurement, Stats } from './harness.js';

export const REWRITE_SIZES: readonly number[] = [64, 1500];
export type RewriteKind = 'port' | 'addr+port';
export type Impl = 'ts' | 'twin';

export interface RewriteResult {
  kind: RewriteKind;
  impl: Impl;
  label: string;
  /** Total IPv4 packet length in bytes. */
  size: number;
  iters: number;
  nsPerPacket: Stats;
}

const IP_OFF = 0;
const L4_OFF = IPV4_HEADER_LEN;
const CHECK_AT = L4_OFF + TCP_OFF_CHECKSUM;

function addr(s: string): number {
  const a = parseIpv4(s);
  if (a === null) throw new Error(`bad address ${s}`);
  return a;
}

/** The two destinations a packet flips between: the virtual service and the instance. */
const DST_ADDRS = new Uint32Array([addr('198.18.0.2'), addr('198.19.0.9')]);
const DST_PORTS = new Uint16Array([12760, 9000]);

/** A valid TCP/IPv4 packet of `size` bytes to 198.19.0.9:9000, built by the wire Reprs. */
function packet(size: number, seed: number): Uint8Array {
  const payload = new Uint8Array(size - IPV4_HEADER_LEN - 20);
  fillRandom(payload, seed);
  const tcp = TcpRepr.defaults({
    srcPort: 40123,
    dstPort: DST_PORTS[1]!,
    seq: 0x12345678,
    ack: 0x9abcdef0,
    flags: TCP_ACK,
    payload,
  });
  const ip = Ipv4Repr.defaults({
    srcAddr: addr('198.18.7.7'),
    dstAddr: DST_ADDRS[1]!,
    protocol: IPPROTO_TCP,
    payloadLen: TcpRepr.bufferLen(tcp),
  });
  const buf = new Uint8Array(Ipv4Repr.bufferLen(ip));
  Ipv4Repr.emit(ip, new Ipv4Packet(buf, IP_OFF));
  const l4Len = TcpRepr.bufferLen(tcp);
  TcpRepr.emit(
    tcp,
    new TcpSegment(buf, L4_OFF, l4Len),
    pseudoHeader4(ip.srcAddr, ip.dstAddr, IPPROTO_TCP, l4Len),
  );
  return buf;
}

function tsPort(buf: Uint8Array): Loop {
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      setDstPortWithChecksumUpdate(buf, L4_OFF, IPPROTO_TCP, DST_PORTS[i & 1]!);
      acc = (acc + buf[CHECK_AT]!) | 0;
    }
    return acc;
  };
}

function twinPort(buf: Uint8Array): Loop {
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      setDstPortReference(buf, IP_OFF, L4_OFF, IPPROTO_TCP, DST_PORTS[i & 1]!);
      acc = (acc + buf[CHECK_AT]!) | 0;
    }
    return acc;
  };
}

function tsAddrPort(buf: Uint8Array): Loop {
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      setIpv4DstAddrWithChecksumUpdate(buf, IP_OFF, L4_OFF, IPPROTO_TCP, DST_ADDRS[i & 1]!);
      setDstPortWithChecksumUpdate(buf, L4_OFF, IPPROTO_TCP, DST_PORTS[i & 1]!);
      acc = (acc + buf[CHECK_AT]!) | 0;
    }
    return acc;
  };
}

function twinAddrPort(buf: Uint8Array): Loop {
  return (iters) => {
    let acc = 0;
    for (let i = 0; i < iters; i++) {
      set32(buf, IP_OFF + IPV4_OFF_DST, DST_ADDRS[i & 1]!);
      set16(buf, L4_OFF + TCP_OFF_DST_PORT, DST_PORTS[i & 1]!);
      recomputeIpv4Checksums(buf, IP_OFF, L4_OFF, IPPROTO_TCP);
      acc = (acc + buf[CHECK_AT]!) | 0;
    }
    return acc;
  };
}

const info = new PacketInfo();

function assertValid(buf: Uint8Array, what: string): void {
  const c = checkPacket(buf, 0, buf.length, info);
  if (c !== Check.OK) throw new Error(`${what}: checkPacket refused the packet (code ${c})`);
  const v = verifyChecksums(buf, info);
  if (v !== Verify.OK) throw new Error(`${what}: bad checksum after rewrite (verify code ${v})`);
}

/**
 * Throws unless, from the same packet, both implementations leave identical and
 * valid packets after 1, 2 and 3 rewrites; then puts both copies back to `base`.
 */
function check(base: Uint8Array, ts: Loop, twin: Loop, a: Uint8Array, b: Uint8Array, what: string) {
  for (let n = 1; n <= 3; n++) {
    a.set(base);
    b.set(base);
    ts(n);
    twin(n);
    assertValid(a, `${what} optimised`);
    assertValid(b, `${what} twin`);
    for (let i = 0; i < a.length; i++) {
      if (a[i] !== b[i]) throw new Error(`${what}: optimised and twin differ at byte ${i}`);
    }
  }
  a.set(base);
  b.set(base);
}

export function rewriteCases(): BenchCase<RewriteResult>[] {
  const cases: BenchCase<RewriteResult>[] = [];
  for (const size of REWRITE_SIZES) {
    const base = packet(size, 0x1624 + size);
    assertValid(base, `built ${size} B packet`);
    const kinds: [RewriteKind, (b: Uint8Array) => Loop, (b: Uint8Array) => Loop][] = [
      ['port', tsPort, twinPort],
      ['addr+port', tsAddrPort, twinAddrPort],
    ];
    for (const [kind, tsOf, twinOf] of kinds) {
      const a = base.slice();
      const b = base.slice();
      const ts = tsOf(a);
      const twin = twinOf(b);
      check(base, ts, twin, a, b, `rewrite ${kind} ${size} B`);
      const plan: [Impl, string, Loop][] = [
        ['twin', 'reference twin (TS, full recompute)', twin],
        ['ts', 'optimised TS (RFC 1624)', ts],
      ];
      for (const [impl, label, loop] of plan) {
        cases.push({
          label: `rewrite ${kind} ${label} ${size} B`,
          loop,
          result: (m: Measurement): RewriteResult => ({
            kind,
            impl,
            label,
            size,
            iters: m.iters,
            nsPerPacket: m.ns,
          }),
          summary: (r) => `${fmtNs(r.nsPerPacket.median)}/packet`,
        });
      }
    }
  }
  return cases;
}
