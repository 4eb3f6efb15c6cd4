import { describe, expect, it } from 'vitest';
import { ipv4ToString, ipv6ToString, parseIpv4 } from '../../src/wire/address.js';
import { ip6 } from '../support/builder.js';
import { Rng } from '../support/rng.js';

describe('parseIpv4 (strict dotted quad)', () => {
  it('parses dotted quads to unsigned 32-bit numbers', () => {
    expect(parseIpv4('0.0.0.0')).toBe(0);
    expect(parseIpv4('127.0.0.1')).toBe(0x7f000001);
    expect(parseIpv4('192.0.2.1')).toBe(0xc0000201);
    expect(parseIpv4('255.255.255.255')).toBe(0xffffffff);
    expect(parseIpv4('10.0.0.0')).toBe(0x0a000000);
  });

  it.each([
    '',
    '1.2.3',
    '1.2.3.4.5',
    '1..2.3',
    '.1.2.3',
    '1.2.3.',
    '256.0.0.1',
    '1.2.3.256',
    '1000.1.1.1',
    '01.2.3.4', // leading zero: octal in inet_aton, refused rather than guessed
    '1.2.3.04',
    '1.2.3.00',
    '0x7f.0.0.1',
    '1.2.3.-4',
    '+1.2.3.4',
    '1e2.0.0.1',
    ' 1.2.3.4',
    '1.2.3.4 ',
    '1.2.3.4\n',
    '1.2.3.4/24',
    '1.2.3.4:80',
    '\uff11.2.3.4', // fullwidth digit one
    '\u0661.2.3.4', // Arabic-Indic digit one
    '127.1',
    '2130706433',
    '::1',
  ])('refuses %j', (s) => {
    expect(parseIpv4(s)).toBeNull();
  });

  it('round-trips with ipv4ToString on seeded random addresses', () => {
    const rng = new Rng(4);
    for (let i = 0; i < 5000; i++) {
      const a = rng.u32();
      const s = ipv4ToString(a);
      expect(s).toMatch(/^(0|[1-9]\d{0,2})(\.(0|[1-9]\d{0,2})){3}$/);
      expect(parseIpv4(s)).toBe(a);
    }
  });

  it('ipv4ToString prints each octet in decimal', () => {
    expect(ipv4ToString(0xc0a800c7)).toBe('192.168.0.199');
    expect(ipv4ToString(0xffffffff)).toBe('255.255.255.255');
    expect(ipv4ToString(0)).toBe('0.0.0.0');
  });
});

describe('ipv6ToString (RFC 5952)', () => {
  it.each([
    // RFC 5952 §4.1: leading zeros in a field are suppressed.
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    // §4.2.1: "::" shortens as much as possible.
    ['2001:db8:0:0:0:0:2:1', '2001:db8::2:1'],
    // §4.2.2: a single 16-bit 0 field is not shortened.
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    // §4.2.3: the longest run of zero fields is shortened...
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'],
    // ...and of equal runs, the first.
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    // §4.3: lowercase.
    ['2001:DB8:0:0:0:0:0:ABCD', '2001:db8::abcd'],
    // Edges: all zero, loopback, zero runs at either end, no zero at all.
    ['0:0:0:0:0:0:0:0', '::'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['1:0:0:0:0:0:0:0', '1::'],
    ['fe80:0:0:0:0:0:0:1', 'fe80::1'],
    ['0:0:1:0:0:0:1:0', '0:0:1::1:0'],
    ['0:0:1:1:1:1:0:0', '::1:1:1:1:0:0'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
    ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
    ['1:0:1:0:1:0:1:0', '1:0:1:0:1:0:1:0'],
  ])('%s -> %s', (full, text) => {
    expect(ipv6ToString(ip6(full))).toBe(text);
  });

  it('reads the address at an offset', () => {
    const b = new Uint8Array(24).fill(0xa5);
    b.set(ip6('2001:db8::1'), 5);
    expect(ipv6ToString(b, 5)).toBe('2001:db8::1');
  });

  it('agrees with the WHATWG URL serializer (also RFC 5952 compression) on seeded random addresses', () => {
    // The URL standard's IPv6 serializer compresses the first longest run of two or
    // more zero pieces and prints lowercase hex without leading zeros: the same rules.
    // Zero pieces are made common so that runs of every length and position occur.
    const rng = new Rng(5952);
    for (let i = 0; i < 5000; i++) {
      const b = new Uint8Array(16);
      for (let w = 0; w < 8; w++) {
        if (rng.int(2) === 0) continue;
        const v = rng.int(3) === 0 ? rng.int(16) : rng.int(0x10000);
        b[2 * w] = v >> 8;
        b[2 * w + 1] = v & 0xff;
      }
      const groups = Array.from({ length: 8 }, (_, w) =>
        ((b[2 * w]! << 8) | b[2 * w + 1]!).toString(16),
      );
      const host = new URL(`http://[${groups.join(':')}]/`).hostname;
      expect(`[${ipv6ToString(b)}]`).toBe(host);
    }
  });
});
