/**
 * Writes the fuzz targets' seed corpus, test/fuzz/corpus/<target>/, from the
 * test builders (test/support/builder.ts): a few valid inputs per target, so
 * that the fuzzer starts from packets, requests and frames that get far. Run
 * `node dist/scripts/fuzz/make-corpus.js` after changing it; the files are
 * committed (deterministic: fixed nonces, no clock).
 */

import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type AnyMessage,
  PROTOCOL_VERSION as COOP_VERSION,
  encode,
} from '../../src/coop/protocol.js';
import { VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4 } from '../../src/wire/virtio.js';
import {
  icmp4,
  ip4,
  ip6,
  ipv4,
  tcp4,
  tcp4Partial,
  tcp6,
  udp,
  udp4,
  udp6,
  vnetHdr,
} from '../../test/support/builder.js';
import { HOST, PORT_A, PORT_B, VIP, VPORT } from './harness.js';
import { KEY, SENDER, seal } from './targets/coop.js';

const ROOT = 'test/fuzz/corpus';
const SYN = 0x02;
const ACK = 0x10;
const FIN = 0x01;
const RST = 0x04;
const PSH = 0x08;

function write(target: string, files: Record<string, Uint8Array | string>): void {
  const dir = join(ROOT, target);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
}

// ---------------------------------------------------------------- packets

const CLIENT_A = ip4('198.18.1.2');
const CLIENT_B = ip4('198.18.2.2');
const CLIENT_C = ip4('198.18.3.2');
const ROUTER = ip4('198.18.0.254');

const synA = tcp4(
  { src: CLIENT_A, dst: VIP, ident: 1 },
  { srcPort: 40000, dstPort: VPORT, seq: 1000, flags: SYN },
);
const synAckA = tcp4(
  { src: HOST, dst: CLIENT_A, ident: 2 },
  { srcPort: PORT_A, dstPort: 40000, seq: 5000, ack: 1001, flags: SYN | ACK },
);
const ackA = tcp4(
  { src: CLIENT_A, dst: VIP, ident: 3 },
  { srcPort: 40000, dstPort: VPORT, seq: 1001, ack: 5001, flags: ACK },
);
const dataA = tcp4Partial(
  { src: CLIENT_A, dst: VIP, ident: 4 },
  {
    srcPort: 40000,
    dstPort: VPORT,
    seq: 1001,
    ack: 5001,
    flags: ACK | PSH,
    payload: new TextEncoder().encode('GET / HTTP/1.0\r\n\r\n'),
  },
);
const finA = tcp4(
  { src: CLIENT_A, dst: VIP, ident: 5 },
  { srcPort: 40000, dstPort: VPORT, seq: 1019, ack: 5001, flags: FIN | ACK },
);
const udpC = udp4(
  { src: CLIENT_C, dst: VIP, ident: 6 },
  { srcPort: 5353, dstPort: VPORT, payload: Uint8Array.of(1, 2, 3, 4) },
);
const udpReplyC = udp4(
  { src: HOST, dst: CLIENT_C, ident: 7 },
  { srcPort: PORT_B, dstPort: 5353, payload: Uint8Array.of(5, 6) },
);
const synB = tcp4(
  { src: CLIENT_B, dst: VIP, ident: 8 },
  { srcPort: 2000, dstPort: VPORT, seq: 7, flags: SYN },
);
/** Tenant b's first instance refuses: the SYN goes to the second one. */
const rstB = tcp4(
  { src: HOST, dst: CLIENT_B, ident: 9 },
  { srcPort: PORT_B, dstPort: 2000, seq: 0, ack: 8, flags: RST | ACK },
);
const echo = icmp4(
  { src: CLIENT_A, dst: VIP, ident: 10 },
  { type: 8, rest: 0x00010001, data: Uint8Array.of(9, 9, 9, 9) },
);
/** A router's "fragmentation needed" about the SYN+ACK vpm sent to client A. */
const quoted = tcp4(
  { src: VIP, dst: CLIENT_A, ident: 11 },
  { srcPort: VPORT, dstPort: 40000, seq: 5000, ack: 1001, flags: SYN | ACK },
);
const icmpErr = icmp4(
  { src: ROUTER, dst: VIP, ident: 12 },
  { type: 3, code: 4, rest: 1400, data: quoted.subarray(0, 28) },
);
const closedSyn = tcp4(
  { src: CLIENT_A, dst: VIP, ident: 13 },
  { srcPort: 40001, dstPort: 81, seq: 1, flags: SYN },
);
const closedUdp = udp4(
  { src: CLIENT_A, dst: VIP, ident: 14 },
  { srcPort: 40001, dstPort: 82, payload: Uint8Array.of(0) },
);

/** A UDP datagram of client A in two IPv4 fragments (first 16 bytes of L4 + the rest). */
function fragments(): [Uint8Array, Uint8Array] {
  const l4 = udp(
    { srcPort: 40002, dstPort: VPORT, payload: new Uint8Array(40).fill(7) },
    { v: 4, src: CLIENT_A, dst: VIP },
  );
  const ip = { src: CLIENT_A, dst: VIP, protocol: 17, ident: 0x4242, df: false };
  return [
    ipv4({ ...ip, mf: true }, l4.subarray(0, 16)),
    ipv4({ ...ip, fragOffset: 16 }, l4.subarray(16)),
  ];
}
const [frag1, frag2] = fragments();

/** A TCP super-packet (TSO, 3 segments of 100 bytes) of client A's flow, partial checksum. */
const superPkt = tcp4Partial(
  { src: CLIENT_A, dst: VIP, ident: 20 },
  {
    srcPort: 40000,
    dstPort: VPORT,
    seq: 1001,
    ack: 5001,
    flags: ACK,
    payload: new Uint8Array(300).fill(0x61),
  },
);
const superHdr = vnetHdr({
  flags: VNET_F_NEEDS_CSUM,
  gsoType: VNET_GSO_TCPV4,
  hdrLen: 40,
  gsoSize: 100,
  csumStart: 20,
  csumOffset: 16,
});
const partialHdr = vnetHdr({ flags: VNET_F_NEEDS_CSUM, csumStart: 20, csumOffset: 16 });
const plain = vnetHdr();

const A6 = ip6('2001:db8::1');
const B6 = ip6('2001:db8::2');

write('parse', {
  'tcp-syn': synA,
  'tcp-data': dataA,
  udp: udpC,
  'icmp-echo': echo,
  'icmp-error': icmpErr,
  'fragment-first': frag1,
  'fragment-later': frag2,
  'ipv4-options': tcp4(
    { src: CLIENT_A, dst: VIP, options: Uint8Array.of(1, 1, 1, 0) },
    { srcPort: 1, dstPort: 2, flags: SYN },
  ),
  tcp6: tcp6({ src: A6, dst: B6 }, { srcPort: 1, dstPort: 2, flags: SYN }),
  udp6: udp6({ src: A6, dst: B6 }, { srcPort: 1, dstPort: 2, payload: Uint8Array.of(1) }),
  'proto-gre': ipv4({ src: CLIENT_A, dst: VIP, protocol: 47 }, new Uint8Array(8)),
});

/** Pipeline records: ctl | length (BE) | virtio-net header + packet. */
function records(...rs: [number, Uint8Array, Uint8Array][]): Uint8Array {
  const parts: number[] = [];
  for (const [ctl, hdr, pkt] of rs) {
    const len = hdr.length + pkt.length;
    parts.push(ctl, len >> 8, len & 0xff, ...hdr, ...pkt);
  }
  return Uint8Array.from(parts);
}
const END = 0x08; // the batch ends after this frame
const T100 = 3; // +100 ms before it
const EXPIRE = 0x10;

write('pipeline', {
  'tcp-flow': records(
    [0, plain, synA],
    [END | T100, plain, synAckA],
    [0, plain, ackA],
    [0, partialHdr, dataA],
    [END, plain, finA],
  ),
  'tcp-super-packet': records([END, plain, synA], [END, plain, synAckA], [END, superHdr, superPkt]),
  'udp-flow': records([0, plain, udpC], [END | T100, plain, udpReplyC]),
  'health-retry': records([END, plain, synB], [END | T100, plain, rstB]),
  icmp: records([0, plain, echo], [END, plain, synA], [END, plain, synAckA], [END, plain, icmpErr]),
  'closed-ports': records([0, plain, closedSyn], [END, plain, closedUdp]),
  'fragments-reversed': records([0, plain, frag2], [END, plain, frag1], [EXPIRE | 6, plain, frag2]),
  'refused-write': records([0x20 | END, plain, synA], [END, plain, synAckA]),
});

// ---------------------------------------------------------------- control requests

const req = (o: unknown) => `${JSON.stringify(o)}\n`;
write('control', {
  ping: req({ v: 1, id: 1, cmd: 'ping' }),
  stats: req({ v: 1, id: 'a', cmd: 'stats', args: {} }),
  flows: req({ v: 1, id: 2, cmd: 'flows' }),
  hello: req({ v: 1, id: 3, cmd: 'hello', args: { aid: 'tenant-a', pid: 1234 } }),
  bind: req({
    v: 1,
    id: 4,
    cmd: 'bind',
    args: { aid: 'tenant-a', proto: 'tcp', vport: 9000, addr: '0.0.0.0', pid: 1234, fd: 5 },
  }),
  release: req({
    v: 1,
    id: 5,
    cmd: 'release',
    args: { aid: 'tenant-a', proto: 'udp', vport: 9000, port: 20001, pid: 1234, fd: 5 },
  }),
  connect: req({
    v: 1,
    id: 6,
    cmd: 'connect',
    oneway: true,
    args: {
      aid: 'tenant-a',
      proto: 'udp',
      local: '10.0.0.1:4000',
      remote: '198.19.0.9:9000',
      pid: 1,
      fd: 3,
    },
  }),
  'bad-version': req({ v: 2, id: 7, cmd: 'ping' }),
  'unknown-command': req({ v: 1, id: 8, cmd: 'nope' }),
});

// ---------------------------------------------------------------- cooperative frames

const NONCE = '00112233445566778899aabbccddeeff';
const msg = (type: string, body: unknown, id = 1): AnyMessage =>
  ({
    v: COOP_VERSION,
    type,
    id,
    ts: 1_700_000_000_000,
    nonce: NONCE,
    from: SENDER,
    body,
  }) as AnyMessage;
const MSGS: Record<string, AnyMessage> = {
  request: msg('request', {
    client: '198.18.1.2:40000',
    service: '198.19.0.9:9000',
    aid: 'tenant-a',
  }),
  'request-udp': msg('request', {
    client: '198.18.1.2:40000',
    service: '198.19.0.9:9000',
    aid: 'tenant-a',
    protocol: 'udp',
  }),
  offer: msg('offer', { aids: ['tenant-a', 'tenant-b'], port: 30001 }),
  ack: msg('ack', { aid: 'tenant-a', port: 30001 }),
  refuse: msg('refuse', { reason: 'no_service', message: 'no such service', aids: [] }),
  confirm: msg('confirm', { port: 30001 }),
};
const coop: Record<string, Uint8Array> = {};
for (const [name, m] of Object.entries(MSGS)) {
  const frame = encode(m, KEY);
  // Odd first byte: the JSON, sealed by the target.
  const json = frame.subarray(5 + SENDER.length, frame.length - 32);
  coop[`json-${name}`] = Buffer.concat([Uint8Array.of(1), json]);
  // Even first byte: a stream of frames (chunks of 1 + (byte >> 1) * 4 bytes).
  coop[`stream-${name}`] = Buffer.concat([Uint8Array.of(0x0e), frame]);
}
coop['stream-two-frames'] = Buffer.concat([
  Uint8Array.of(0),
  encode(MSGS.offer!, KEY),
  encode(MSGS.confirm!, KEY),
]);
coop['stream-bad-mac'] = Buffer.concat([
  Uint8Array.of(2),
  seal(SENDER, Buffer.from('{}'), Buffer.alloc(32, 1)),
]);
write('coop', coop);

console.log(`seed corpus written to ${ROOT}/`);
