import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  aidFilter,
  andFilters,
  endpointFilter,
  FilterError,
  type FlowTuples,
  findService,
  flowFilter,
  type InstanceEndpoint,
  parseEndpoint,
  serviceFilter,
  tupleFilter,
} from '../../src/inspect/filter.js';
import { LINKTYPE_RAW } from '../../src/pcap/format.js';
import { PcapWriter } from '../../src/pcap/writer.js';
import type { ServiceView } from '../../src/view/views.js';
import { ip4, tcp4, udp4 } from '../support/builder.js';
import { runCommand } from '../support/netns.js';

/*
 * The shortcuts' filters are checked twice: as text (what the user sees on the
 * "listening on" line), and by what they select: libpcap itself (tcpdump -r FILE
 * FILTER) runs each one over a file holding all four tuples of four flows plus
 * decoys, and the test compares the packets it keeps with the ones that belong.
 *
 *   f1  198.18.1.2:40000   > web 198.19.0.9:9000     aid a  real 198.19.255.1:19001
 *   f2  198.18.2.2:40001   > web                     aid b  real 198.19.255.1:19002
 *   f3  198.19.255.1:40002 > web (local client,      aid a  real 198.19.255.1:19001
 *                            nat 198.19.255.2:40002)
 *   f4  198.18.1.2:40003   > api 198.19.0.10:8080    aid c  real 198.19.255.1:19003
 */

const SERVICES: ServiceView[] = [
  { name: 'web', address: '198.19.0.9', port: 9000, protocol: 'tcp' },
  { name: 'api', address: '198.19.0.10', port: 8080, protocol: 'tcp' },
];
const INSTANCES: InstanceEndpoint[] = [
  { aid: 'a', proto: 'tcp', vport: 9000, address: '198.19.255.1', port: 19001 },
  { aid: 'b', proto: 'tcp', vport: 9000, address: '198.19.255.1', port: 19002 },
  { aid: 'c', proto: 'tcp', vport: 8080, address: '198.19.255.1', port: 19003 },
  { aid: 'd', proto: 'tcp', vport: 0, address: '198.19.255.1', port: 19004 },
];
const FLOWS: FlowTuples[] = [
  {
    id: 1,
    client: '198.18.1.2:40000',
    service: '198.19.0.9:9000',
    aid: 'a',
    real: '198.19.255.1:19001',
    nat: null,
  },
  {
    id: 2,
    client: '198.18.2.2:40001',
    service: '198.19.0.9:9000',
    aid: 'b',
    real: '198.19.255.1:19002',
    nat: null,
  },
  {
    id: 3,
    client: '198.19.255.1:40002',
    service: '198.19.0.9:9000',
    aid: 'a',
    real: '198.19.255.1:19001',
    nat: '198.19.255.2:40002',
  },
  {
    id: 4,
    client: '198.18.1.2:40003',
    service: '198.19.0.10:8080',
    aid: 'c',
    real: '198.19.255.1:19003',
    nat: null,
  },
];

interface Labelled {
  label: string;
  data: Uint8Array;
}

function split(ep: string): [number, number] {
  const i = ep.lastIndexOf(':');
  return [ip4(ep.slice(0, i)), Number(ep.slice(i + 1))];
}

function seg(label: string, from: string, to: string): Labelled {
  const [src, srcPort] = split(from);
  const [dst, dstPort] = split(to);
  return { label, data: tcp4({ src, dst }, { srcPort, dstPort }) };
}

/** The four tuples of every flow, labelled "f<id> c>v" etc., then the decoys. */
function capture(): Labelled[] {
  const out: Labelled[] = [];
  for (const f of FLOWS) {
    const n = f.nat ?? f.client;
    out.push(seg(`f${f.id} c>v`, f.client, f.service));
    out.push(seg(`f${f.id} v>c`, f.service, f.client));
    out.push(seg(`f${f.id} n>r`, n, f.real));
    out.push(seg(`f${f.id} r>n`, f.real, n));
  }
  // Ports and addresses swapped: a filter on "host V and port P" would take these.
  out.push(seg('decoy swapped', '198.19.0.9:40000', '198.18.1.2:9000'));
  out.push(seg('decoy other-real', '198.18.1.2:40000', '198.19.255.9:19001'));
  const [v, vp] = split('198.19.0.9:9000');
  out.push({
    label: 'decoy udp',
    data: udp4({ src: ip4('198.18.1.2'), dst: v }, { srcPort: 40000, dstPort: vp }),
  });
  return out;
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

let pcapFile = '';
/** A pcap of `capture()`, packet i stamped i seconds, written once. */
function pcap(): string {
  if (pcapFile) return pcapFile;
  const d = mkdtempSync(join(tmpdir(), 'vpm-filter-'));
  dirs.push(d);
  const chunks: Buffer[] = [];
  const w = new PcapWriter((b) => chunks.push(Buffer.from(b)), { linkType: LINKTYPE_RAW });
  capture().forEach((p, i) => {
    w.write(p.data, i, 0);
  });
  w.flush();
  pcapFile = join(d, 'tuples.pcap');
  writeFileSync(pcapFile, Buffer.concat(chunks));
  return pcapFile;
}

/** The labels of the packets libpcap keeps for `filter`. */
function selected(filter: string): string[] {
  const labels = capture().map((p) => p.label);
  return runCommand('tcpdump', ['-r', pcap(), '-n', '-tt', filter])
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => labels[Number(l.split('.')[0])]!);
}

const tuples = (...ids: number[]) =>
  ids.flatMap((id) => ['c>v', 'v>c', 'n>r', 'r>n'].map((t) => `f${id} ${t}`));

describe('filter text', () => {
  it('spells endpoint and connection filters in both directions', () => {
    expect(endpointFilter({ addr: '198.19.0.9', port: 9000 })).toBe(
      '(src host 198.19.0.9 and src port 9000) or (dst host 198.19.0.9 and dst port 9000)',
    );
    expect(
      tupleFilter({ addr: '198.18.1.2', port: 40000 }, { addr: '198.19.0.9', port: 9000 }),
    ).toBe(
      '(src host 198.18.1.2 and src port 40000 and dst host 198.19.0.9 and dst port 9000) or ' +
        '(src host 198.19.0.9 and src port 9000 and dst host 198.18.1.2 and dst port 40000)',
    );
  });

  it('combines filters as (a) and (b), leaving out empty ones', () => {
    expect(andFilters([])).toBe('');
    expect(andFilters(['', '  '])).toBe('');
    expect(andFilters(['tcp'])).toBe('tcp');
    expect(andFilters(['tcp and (x)', '', 'port 80 or port 443'])).toBe(
      '(tcp and (x)) and (port 80 or port 443)',
    );
  });

  it('parses ADDRESS:PORT strictly', () => {
    expect(parseEndpoint('198.19.0.9:9000')).toEqual({ addr: '198.19.0.9', port: 9000 });
    for (const bad of [
      '198.19.0.9',
      '198.19.0.9:0',
      '198.19.0.9:65536',
      '198.19.0.9:9x',
      'web:9000',
      '01.2.3.4:5',
      ':9000',
      '1.2.3.4 or host 5.6.7.8:1',
    ])
      expect(parseEndpoint(bad), bad).toBeNull();
  });

  it('never puts unchecked text into a filter', () => {
    expect(() => endpointFilter({ addr: '1.2.3.4 or host 5.6.7.8', port: 1 })).toThrow(FilterError);
    expect(() => endpointFilter({ addr: '1.2.3.4', port: 70000 })).toThrow(FilterError);
    expect(() => flowFilter({ ...FLOWS[0]!, real: 'bogus' })).toThrow(
      /flow 1 real "bogus", which is not ADDRESS:PORT/,
    );
  });

  it('finds a service by name or VIP:PORT and names the known ones otherwise', () => {
    expect(findService(SERVICES, 'api').port).toBe(8080);
    expect(findService(SERVICES, '198.19.0.9:9000').name).toBe('web');
    expect(() => findService(SERVICES, 'nope')).toThrow(
      '--service: no service "nope"; the daemon has web (198.19.0.9:9000), api (198.19.0.10:8080)',
    );
    expect(() => findService(SERVICES, '198.19.0.9:9001')).toThrow(FilterError);
    expect(() => findService([], 'web')).toThrow(/the daemon has none/);
  });

  it('refuses an AID the daemon does not know', () => {
    expect(() => aidFilter('zz', INSTANCES, FLOWS)).toThrow(
      '--aid: the daemon has no instance and no flow of AID "zz"',
    );
  });
});

describe('filter selection, by libpcap over a file of every tuple', () => {
  it('--flow takes exactly both connections of that flow (with a translated client)', () => {
    expect(selected(flowFilter(FLOWS[0]!))).toEqual(tuples(1));
    expect(selected(flowFilter(FLOWS[2]!))).toEqual(tuples(3));
  });

  it('--service takes its VIP side and the real side of every instance that serves it', () => {
    const web = serviceFilter(SERVICES[0]!, INSTANCES, FLOWS);
    expect(selected(web)).toEqual(tuples(1, 2, 3));
    // The instance of any port (d, 19004) can serve it too: its port is in the filter.
    expect(web).toContain('src port 19004');
    expect(selected(serviceFilter(SERVICES[1]!, INSTANCES, FLOWS))).toEqual(tuples(4));
    // Without `instances` (an older daemon) the flows still give the real side.
    expect(selected(serviceFilter(SERVICES[0]!, [], FLOWS))).toEqual(tuples(1, 2, 3));
  });

  it("--aid takes its instances' ports and its clients' VIP side", () => {
    expect(selected(aidFilter('a', INSTANCES, FLOWS))).toEqual(tuples(1, 3));
    expect(selected(aidFilter('b', INSTANCES, FLOWS))).toEqual(tuples(2));
  });

  it('and-ed with a user filter, both must hold', () => {
    const f = andFilters([serviceFilter(SERVICES[0]!, INSTANCES, FLOWS), 'src net 198.18.0.0/16']);
    expect(selected(f)).toEqual(['f1 c>v', 'f1 n>r', 'f2 c>v', 'f2 n>r']);
  });
});
