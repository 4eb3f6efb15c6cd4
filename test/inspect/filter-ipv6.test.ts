/*
 * `vpm dump` and IPv6: the shortcuts' filters take "[v6]:port" endpoints from the
 * daemon and a dual-stack service's two VIPs, and a LINKTYPE_RAW pcap of IPv6
 * packets (what `vpm dump -w` writes: src/pcap/writer.ts) is read by tcpdump and
 * tshark, which also run the filters (libpcap compiles "host 2001:2::9" to ip6).
 *
 *   f1  [2001:2:1::2]:40000 > web [2001:2::9]:9000   aid a  real [2001:2:0:ff::1]:19001
 *   f2  198.18.1.2:40001    > web 198.19.0.9:9000    aid a  real 198.19.255.1:19001
 *   f3  [2001:2:2::2]:40002 > web [2001:2::9]:9000   aid b  real [2001:2:0:ff::1]:19002
 */

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  aidFilter,
  endpointFilter,
  FilterError,
  type FlowTuples,
  findService,
  flowFilter,
  type InstanceEndpoint,
  parseEndpoint,
  serviceFilter,
} from '../../src/inspect/filter.js';
import { LINKTYPE_RAW } from '../../src/pcap/format.js';
import { PcapWriter } from '../../src/pcap/writer.js';
import type { ServiceView } from '../../src/view/views.js';
import { parseEndpoint as parseIpEndpoint } from '../../src/wire/address.js';
import { ip4, ip6, tcp4, tcp6 } from '../support/builder.js';
import { requireCommands, runCommand } from '../support/netns.js';

const WEB: ServiceView = {
  name: 'web',
  address: '198.19.0.9',
  addresses: ['198.19.0.9', '2001:2::9'],
  port: 9000,
  protocol: 'tcp',
};
const INSTANCES: InstanceEndpoint[] = [
  { aid: 'a', proto: 'tcp', vport: 9000, address: '198.19.255.1', port: 19001 },
  { aid: 'a', proto: 'tcp', vport: 9000, address: '2001:2:0:ff::1', port: 19001 },
  { aid: 'b', proto: 'tcp', vport: 9000, address: '2001:2:0:ff::1', port: 19002 },
];
const FLOWS: FlowTuples[] = [
  {
    id: 1,
    client: '[2001:2:1::2]:40000',
    service: '[2001:2::9]:9000',
    aid: 'a',
    real: '[2001:2:0:ff::1]:19001',
    nat: null,
  },
  {
    id: 2,
    client: '198.18.1.2:40001',
    service: '198.19.0.9:9000',
    aid: 'a',
    real: '198.19.255.1:19001',
    nat: null,
  },
  {
    id: 3,
    client: '[2001:2:2::2]:40002',
    service: '[2001:2::9]:9000',
    aid: 'b',
    real: '[2001:2:0:ff::1]:19002',
    nat: null,
  },
];

function seg(label: string, from: string, to: string) {
  const a = parseIpEndpoint(from)!;
  const b = parseIpEndpoint(to)!;
  const text = (e: string) =>
    e.startsWith('[') ? e.slice(1, e.indexOf(']')) : e.slice(0, e.lastIndexOf(':'));
  const data =
    typeof a.address === 'bigint'
      ? tcp6({ src: ip6(text(from)), dst: ip6(text(to)) }, { srcPort: a.port, dstPort: b.port })
      : tcp4({ src: ip4(text(from)), dst: ip4(text(to)) }, { srcPort: a.port, dstPort: b.port });
  return { label, data };
}

function capture() {
  return FLOWS.flatMap((f) => [
    seg(`f${f.id} c>v`, f.client, f.service),
    seg(`f${f.id} v>c`, f.service, f.client),
    seg(`f${f.id} n>r`, f.client, f.real),
    seg(`f${f.id} r>n`, f.real, f.client),
  ]);
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

let file = '';
function pcap(): string {
  if (file) return file;
  const d = mkdtempSync(join(tmpdir(), 'vpm-filter6-'));
  dirs.push(d);
  const chunks: Buffer[] = [];
  const w = new PcapWriter((b) => chunks.push(Buffer.from(b)), { linkType: LINKTYPE_RAW });
  capture().forEach((p, i) => {
    w.write(p.data, i, 0);
  });
  w.flush();
  file = join(d, 'v6.pcap');
  writeFileSync(file, Buffer.concat(chunks));
  return file;
}

function selected(filter: string): string[] {
  const labels = capture().map((p) => p.label);
  return runCommand('tcpdump', ['-r', pcap(), '-n', '-tt', filter])
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => labels[Number(l.split('.')[0])]!);
}

const tuples = (...ids: number[]) =>
  ids.flatMap((id) => ['c>v', 'v>c', 'n>r', 'r>n'].map((t) => `f${id} ${t}`));

describe('IPv6 endpoints in the filters', () => {
  it('parses "[v6]:port" into canonical text, and refuses a bare IPv6 address with a port', () => {
    expect(parseEndpoint('[2001:0002::9]:9000')).toEqual({ addr: '2001:2::9', port: 9000 });
    expect(parseEndpoint('2001:2::9:9000')).toBeNull();
    expect(parseEndpoint('[2001:2::9%eth0]:9000')).toBeNull();
    expect(parseEndpoint('[2001:2::9]:0')).toBeNull();
  });

  it('spells an IPv6 endpoint filter with the RFC 5952 address', () => {
    expect(endpointFilter({ addr: '2001:2::9', port: 9000 })).toBe(
      '(src host 2001:2::9 and src port 9000) or (dst host 2001:2::9 and dst port 9000)',
    );
    expect(() => endpointFilter({ addr: '2001:2::9 or 1', port: 9000 })).toThrow(FilterError);
  });

  it('finds a dual-stack service by either VIP', () => {
    expect(findService([WEB], '[2001:2::9]:9000')).toBe(WEB);
    expect(findService([WEB], '198.19.0.9:9000')).toBe(WEB);
    expect(() => findService([WEB], '[2001:2::10]:9000')).toThrow(
      '--service: no service "[2001:2::10]:9000"; the daemon has web (198.19.0.9:9000 [2001:2::9]:9000)',
    );
  });
});

describe('what libpcap selects with them, from a LINKTYPE_RAW file of IPv6 and IPv4 packets', () => {
  it('--service: both VIPs and every real endpoint, of both families', () => {
    requireCommands('tcpdump');
    expect(selected(serviceFilter(WEB, INSTANCES, FLOWS))).toEqual(tuples(1, 2, 3));
  });

  it('--aid and --flow pick the IPv6 flows of their own', () => {
    requireCommands('tcpdump');
    expect(selected(aidFilter('b', INSTANCES, FLOWS))).toEqual(tuples(3));
    expect(selected(flowFilter(FLOWS[0]!))).toEqual(tuples(1));
  });

  it('tshark reads the file as raw IPv6 (and IPv4) packets', () => {
    requireCommands('tshark');
    const out = runCommand('tshark', [
      '-r',
      pcap(),
      '-T',
      'fields',
      '-e',
      'ipv6.src',
      '-e',
      'ipv6.dst',
      '-e',
      'ip.src',
      '-e',
      'tcp.srcport',
    ]);
    const rows = out.split('\n').filter((l) => l !== '');
    expect(rows).toHaveLength(12);
    expect(rows[0]!.split('\t')).toEqual(['2001:2:1::2', '2001:2::9', '', '40000']);
    expect(rows[4]!.split('\t')).toEqual(['', '', '198.18.1.2', '40001']);
    expect(rows[11]!.split('\t')).toEqual(['2001:2:0:ff::1', '2001:2:2::2', '', '19002']);
  });
});
