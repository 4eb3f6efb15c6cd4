/**
 * `vpm flows` for IPv6 flows: flowEndpoints reads the flow table's address
 * columns as the IPv6 contract lays them out (family per slot; 16 words per slot
 * in addr6: client, vip, nat, real) and writes "[v6]:port" in RFC 5952 form;
 * formatFlows shows them in the table. The columns are filled by hand here, as
 * the data plane would (its IPv6 table is part A of issue 12).
 */

import { describe, expect, it } from 'vitest';
import { type FlowAddressColumns, flowEndpoints } from '../../src/daemon/daemon.js';
import { formatFlows } from '../../src/view/format.js';
import { ipv6ToWords, parseIpv4, parseIpv6 } from '../../src/wire/address.js';

function columns(n: number): Required<FlowAddressColumns> {
  return {
    clientAddr: new Uint32Array(n),
    vipAddr: new Uint32Array(n),
    natAddr: new Uint32Array(n),
    realAddr: new Uint32Array(n),
    clientPort: new Uint16Array(n),
    vport: new Uint16Array(n),
    natPort: new Uint16Array(n),
    realPort: new Uint16Array(n),
    family: new Uint8Array(n).fill(4),
    addr6: new Uint32Array(16 * n).fill(0xa5a5a5a5),
  };
}

function set6(t: Required<FlowAddressColumns>, s: number, addrs: [string, string, string, string]) {
  t.family[s] = 6;
  addrs.forEach((a, k) => {
    ipv6ToWords(parseIpv6(a)!, t.addr6!, s * 16 + 4 * k);
    // The u32 columns hold the fold; whatever they hold, a v6 flow is not read from them.
  });
  t.clientAddr[s] = 0xdeadbeef;
}

describe('flowEndpoints', () => {
  it('an IPv4 flow, in a table with the IPv6 columns or without them', () => {
    const t = columns(2);
    t.clientAddr[1] = parseIpv4('198.18.1.2')!;
    t.vipAddr[1] = parseIpv4('198.19.0.9')!;
    t.natAddr[1] = t.clientAddr[1]!;
    t.realAddr[1] = parseIpv4('198.19.255.1')!;
    t.clientPort[1] = t.natPort[1] = 40000;
    t.vport[1] = 9000;
    t.realPort[1] = 19001;
    const want = {
      client: '198.18.1.2:40000',
      service: '198.19.0.9:9000',
      real: '198.19.255.1:19001',
      nat: null,
    };
    expect(flowEndpoints(t, 1)).toEqual(want);
    const { family: _f, addr6: _a, ...old } = t;
    expect(flowEndpoints(old, 1)).toEqual(want);
  });

  it('an IPv6 flow: [v6]:port from the addr6 words of its slot, nat only when translated', () => {
    const t = columns(3);
    set6(t, 2, ['2001:2:1::2', '2001:2::9', '2001:2:1::2', '2001:2:0:ff::1']);
    t.clientPort[2] = t.natPort[2] = 40000;
    t.vport[2] = 9000;
    t.realPort[2] = 19001;
    expect(flowEndpoints(t, 2)).toEqual({
      client: '[2001:2:1::2]:40000',
      service: '[2001:2::9]:9000',
      real: '[2001:2:0:ff::1]:19001',
      nat: null,
    });
    // A local client, translated to tun.localClientAddress6.
    set6(t, 1, ['2001:2:0:ff::1', '2001:2::9', '2001:2:0:ff::2', '2001:2:0:ff::1']);
    t.clientPort[1] = t.natPort[1] = 40001;
    t.vport[1] = 9000;
    t.realPort[1] = 19001;
    expect(flowEndpoints(t, 1).nat).toBe('[2001:2:0:ff::2]:40001');
  });

  it('vpm flows shows them in its table', () => {
    const table = formatFlows([
      {
        id: 7,
        protocol: 'tcp',
        client: '[2001:2:1::2]:40000',
        service: '[2001:2::9]:9000',
        serviceName: 'web',
        aid: 'a',
        real: '[2001:2:0:ff::1]:19001',
        nat: null,
        state: 'established',
        ageMs: 1500,
        idleMs: 0,
        packetsIn: 3,
        bytesIn: 180,
        packetsOut: 2,
        bytesOut: 120,
      },
    ]);
    expect(table.split('\n')[1]).toBe(
      '7   tcp    [2001:2:1::2]:40000  web [2001:2::9]:9000  a    [2001:2:0:ff::1]:19001  established  1.5s  3/2          180/120',
    );
  });
});
