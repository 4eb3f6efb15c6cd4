/**
 * The IPv6 side of the classification rules: services and VIPs found by their
 * 16-byte address read in place (two addresses with the same fold told apart),
 * selectors by family (`anyClient`, IPv6 ranges, IPv4 ranges never matching an
 * IPv6 client), and rules without IPv6 fields behaving as before.
 */

import { describe, expect, it } from 'vitest';
import { Rules } from '../../src/datapath/rules.js';
import { ip4, ip6, PROTO_TCP, PROTO_UDP, words6 } from '../support/builder.js';

const NONE = new Uint32Array(0);

/** `a` at offset 5 of a buffer of 0xa5. */
function at5(a: Uint8Array): Uint8Array {
  const b = new Uint8Array(32).fill(0xa5);
  b.set(a, 5);
  return b;
}

describe('Rules over IPv6', () => {
  const vipA = ip6('2001:2:0:1::9');
  // The same fold (w0^w1^w2^w3) as vipA: its first two words swapped.
  const vipB = ip6('0:1:2001:2::9');
  const rules = new Rules({
    services: [
      { name: 'a', addr: -1, addr6: words6(vipA), port: 80, proto: PROTO_TCP, peer: -1 },
      { name: 'b', addr: -1, addr6: words6(vipB), port: 80, proto: PROTO_TCP, peer: -1 },
      {
        name: 'a-udp',
        addr: ip4('198.19.0.9'),
        addr6: words6(vipA),
        port: 80,
        proto: PROTO_UDP,
        peer: -1,
      },
    ],
    selectors: [
      // IPv4 ranges only: never an IPv6 client.
      {
        service: -1,
        cidrBase: Uint32Array.of(0),
        cidrMask: Uint32Array.of(0),
        portLo: 0,
        portHi: 65535,
        aid: 3,
      },
      {
        service: 0,
        cidrBase: NONE,
        cidrMask: NONE,
        cidr6Words: Uint32Array.of(0x20010002, 0x00010000, 0, 0, 0xffffffff, 0xffff0000, 0, 0),
        anyClient: false,
        portLo: 0,
        portHi: 65535,
        aid: 1,
      },
      {
        service: 1,
        cidrBase: NONE,
        cidrMask: NONE,
        anyClient: true,
        portLo: 0,
        portHi: 65535,
        aid: 2,
      },
    ],
    aidNames: ['x', 'y', 'z', 'v4'],
    defaultAid: 0,
  });

  it('finds each service by its own address, port and protocol, also when two addresses fold alike', () => {
    expect(words6(vipA).reduce((x, w) => x ^ w, 0) >>> 0).toBe(
      words6(vipB).reduce((x, w) => x ^ w, 0) >>> 0,
    );
    expect(rules.findService6(at5(vipA), 5, 80, PROTO_TCP)).toBe(0);
    expect(rules.findService6(at5(vipB), 5, 80, PROTO_TCP)).toBe(1);
    expect(rules.findService6(at5(vipA), 5, 80, PROTO_UDP)).toBe(2);
    expect(rules.findService6(at5(vipA), 5, 81, PROTO_TCP)).toBe(-1);
    expect(rules.findService6(at5(ip6('2001:2:0:1::8')), 5, 80, PROTO_TCP)).toBe(-1);
    expect(rules.isVip6(at5(vipB), 5)).toBe(true);
    expect(rules.isVip6(at5(ip6('::9')), 5)).toBe(false);
    // The IPv4 address of a dual-stack service; a service without one is no IPv4 VIP.
    expect(rules.findService(ip4('198.19.0.9'), 80, PROTO_UDP)).toBe(2);
    expect(rules.isVip(-1)).toBe(false);
  });

  it('selects by family: IPv6 ranges for IPv6 clients, anyClient for both, IPv4 ranges never for IPv6', () => {
    expect(rules.selectAid6(0, at5(ip6('2001:2:1:5::1')), 5, 4000)).toBe(1);
    expect(rules.selectAid6(0, at5(ip6('2001:2:2::1')), 5, 4000)).toBe(0); // default
    expect(rules.selectAid6(1, at5(ip6('2001:2:2::1')), 5, 4000)).toBe(2); // anyClient
    expect(rules.selectAid(0, ip4('198.18.0.1'), 4000)).toBe(3);
    expect(rules.selectors[2]!.anyClient).toBe(true);
    // A rule of old (no IPv6 fields) with no ranges matches any client.
    const old = new Rules({
      services: [{ name: 'a', addr: ip4('198.19.0.9'), port: 80, proto: PROTO_TCP, peer: -1 }],
      selectors: [
        { service: -1, cidrBase: NONE, cidrMask: NONE, portLo: 0, portHi: 65535, aid: 1 },
      ],
      aidNames: ['x', 'y'],
      defaultAid: 0,
    });
    expect(old.selectAid(0, ip4('198.18.0.1'), 1)).toBe(1);
    expect(old.selectAid6(0, at5(ip6('2001:2::1')), 5, 1)).toBe(1);
    expect(old.findService6(at5(ip6('::')), 5, 80, PROTO_TCP)).toBe(-1);
  });
});
