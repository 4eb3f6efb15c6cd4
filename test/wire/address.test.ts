import { describe, expect, it } from 'vitest';
import {
  formatAddr,
  formatEndpoint,
  formatIpv6,
  ipv4ToString,
  ipv6FromBytes,
  ipv6FromWords,
  ipv6ToString,
  ipv6ToWords,
  isV4Mapped,
  parseAddr,
  parseEndpoint,
  parseIpv4,
  parseIpv6,
} from '../../src/wire/address.js';
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
      // v4-mapped addresses are the one difference: RFC 5952 §5 writes their dotted quad.
      if (isV4Mapped(ipv6FromBytes(b, 0))) continue;
      expect(`[${ipv6ToString(b)}]`).toBe(host);
    }
  });
});

/** The value of eight 16-bit groups, written independently of the parser. */
function groups(...g: number[]): bigint {
  return g.reduce((a, w) => (a << 16n) | BigInt(w), 0n);
}

describe('parseIpv6 (every RFC 4291 §2.2 text form, nothing else)', () => {
  it.each([
    // §2.2 form 1: full, with and without leading zeros.
    [
      '2001:0db8:0000:0000:0008:0800:200c:417a',
      groups(0x2001, 0xdb8, 0, 0, 8, 0x800, 0x200c, 0x417a),
    ],
    ['2001:db8:0:0:8:800:200c:417a', groups(0x2001, 0xdb8, 0, 0, 8, 0x800, 0x200c, 0x417a)],
    // form 2: "::" for one or more zero groups, anywhere.
    ['2001:db8::8:800:200c:417a', groups(0x2001, 0xdb8, 0, 0, 8, 0x800, 0x200c, 0x417a)],
    ['ff01::101', groups(0xff01, 0, 0, 0, 0, 0, 0, 0x101)],
    ['::1', 1n],
    ['::', 0n],
    ['1::', groups(1, 0, 0, 0, 0, 0, 0, 0)],
    ['1:2:3:4:5:6:7::', groups(1, 2, 3, 4, 5, 6, 7, 0)],
    ['::2:3:4:5:6:7:8', groups(0, 2, 3, 4, 5, 6, 7, 8)],
    ['2001:2:0:ff::1', groups(0x2001, 2, 0, 0xff, 0, 0, 0, 1)],
    // form 3: the low 32 bits as a dotted quad.
    ['0:0:0:0:0:0:13.1.68.3', groups(0, 0, 0, 0, 0, 0, 0x0d01, 0x4403)],
    ['::13.1.68.3', groups(0, 0, 0, 0, 0, 0, 0x0d01, 0x4403)],
    ['::ffff:198.18.0.1', groups(0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0001)],
    ['64:ff9b::198.18.0.1', groups(0x64, 0xff9b, 0, 0, 0, 0, 0xc612, 0x0001)],
    ['1:2:3:4:5:6:1.2.3.4', groups(1, 2, 3, 4, 5, 6, 0x102, 0x304)],
    // Hex digits of either case (§2.2: "case-insensitive").
    ['2001:DB8::ABCD', groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xabcd)],
    ['FE80::1', groups(0xfe80, 0, 0, 0, 0, 0, 0, 1)],
  ])('%s', (text, value) => {
    expect(parseIpv6(text)).toBe(value);
  });

  it.each([
    '',
    ':',
    ':::',
    '1::2::3', // two "::"
    '12345::', // a group of five digits
    '1:2:3:4:5:6:7', // seven groups
    '1:2:3:4:5:6:7:8:9',
    '1:2:3:4:5:6::7:8', // "::" with eight groups
    ':1::',
    '1:',
    '1:2:3:4:5:6:7:8:',
    'fe80::1%eth0', // a zone id names an interface, not an address
    'fe80::1%1',
    '[::1]', // brackets belong to an endpoint
    '::1/128', // a prefix belongs to a CIDR
    '2001:db8::/32',
    ' ::1',
    '::1 ',
    '0x1::',
    'g::1',
    '::1.2.3', // a short dotted quad
    '::256.1.1.1',
    '::ffff:01.2.3.4', // a leading zero in an octet
    '1.2.3.4::',
    '1:2:3:4:5:6:7:1.2.3.4', // the dotted quad is two groups: nine in all
    '198.18.0.1', // IPv4 is not IPv6
    '::\uff11', // fullwidth digit
  ])('refuses %j', (text) => {
    expect(parseIpv6(text)).toBeNull();
  });

  it('round-trips with formatIpv6 on seeded random addresses, and formatIpv6 is idempotent text', () => {
    const rng = new Rng(4291);
    for (let i = 0; i < 3000; i++) {
      const g = Array.from({ length: 8 }, () => (rng.int(2) === 0 ? 0 : rng.int(0x10000)));
      const a = groups(...g);
      const text = formatIpv6(a);
      expect(parseIpv6(text)).toBe(a);
      // The full form parses to the same value too.
      expect(parseIpv6(g.map((w) => w.toString(16).padStart(4, '0')).join(':'))).toBe(a);
    }
  });
});

describe('formatIpv6 (RFC 5952)', () => {
  it.each([
    [groups(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), '2001:db8::1'],
    [groups(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), '2001:db8:0:1:1:1:1:1'],
    [groups(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), '2001:db8::1:0:0:1'],
    [0n, '::'],
    [1n, '::1'],
    // §5: v4-mapped addresses end in their dotted quad.
    [groups(0, 0, 0, 0, 0, 0xffff, 0xc612, 1), '::ffff:198.18.0.1'],
    // Other embedded forms are plain hex (§5 names only the mapped form as "recommended").
    [groups(0, 0, 0, 0, 0, 0, 0xc612, 1), '::c612:1'],
  ])('%s -> %s', (a, text) => {
    expect(formatIpv6(a)).toBe(text);
  });

  it('upper case and full forms come out canonical', () => {
    expect(formatIpv6(parseIpv6('2001:0DB8:0000:0000:0000:0000:0000:0001')!)).toBe('2001:db8::1');
  });

  it('refuses a value outside 0..2^128-1', () => {
    expect(() => formatIpv6(-1n)).toThrow(RangeError);
    expect(() => formatIpv6(1n << 128n)).toThrow(RangeError);
  });
});

describe("word and byte forms (the data plane's four big-endian u32 words)", () => {
  it('word i holds bytes 4i..4i+3 of the address, big-endian', () => {
    const a = parseIpv6('2001:2:0:ff::1:8000:1')!;
    const w = new Uint32Array(6).fill(0xa5a5a5a5);
    ipv6ToWords(a, w, 1);
    expect([...w]).toEqual([
      0xa5a5a5a5, 0x20010002, 0x000000ff, 0x00000001, 0x80000001, 0xa5a5a5a5,
    ]);
    expect(ipv6FromWords(w, 1)).toBe(a);
  });

  it('ipv6FromBytes reads 16 bytes at an offset', () => {
    const b = new Uint8Array(20).fill(0xa5);
    b.set(ip6('2001:2::9'), 3);
    expect(ipv6FromBytes(b, 3)).toBe(parseIpv6('2001:2::9'));
  });

  it('round-trips words on seeded random addresses', () => {
    const rng = new Rng(128);
    const w = new Uint32Array(4);
    for (let i = 0; i < 1000; i++) {
      const a = groups(...Array.from({ length: 8 }, () => rng.int(0x10000)));
      ipv6ToWords(a, w);
      expect(ipv6FromWords(w)).toBe(a);
    }
  });
});

describe('either family: parseAddr, formatAddr, endpoints', () => {
  it('the type tells the family', () => {
    expect(parseAddr('198.18.0.1')).toBe(0xc6120001);
    expect(parseAddr('2001:2::1')).toBe(groups(0x2001, 2, 0, 0, 0, 0, 0, 1));
    expect(parseAddr('2001:2::1%lo')).toBeNull();
    expect(parseAddr('nonsense')).toBeNull();
    expect(formatAddr(0xc6120001)).toBe('198.18.0.1');
    expect(formatAddr(parseAddr('2001:0002::0001')!)).toBe('2001:2::1');
  });

  it('endpoints are "a.b.c.d:port" and "[v6]:port"', () => {
    expect(parseEndpoint('198.18.0.2:7070')).toEqual({ address: 0xc6120002, port: 7070 });
    expect(parseEndpoint('[2001:2::2]:7070')).toEqual({
      address: parseIpv6('2001:2::2'),
      port: 7070,
    });
    expect(parseEndpoint('[::1]:9464')).toEqual({ address: 1n, port: 9464 });
    expect(parseEndpoint('[::ffff:198.18.0.2]:1')).toEqual({
      address: parseIpv6('::ffff:198.18.0.2'),
      port: 1,
    });
    expect(formatEndpoint(0xc6120002, 7070)).toBe('198.18.0.2:7070');
    expect(formatEndpoint(parseIpv6('2001:0002:0:0::2')!, 7070)).toBe('[2001:2::2]:7070');
  });

  it.each([
    '2001:2::2:7070', // ambiguous without brackets
    '[2001:2::2]', // no port
    '[2001:2::2]7070',
    '[2001:2::2]:',
    '[2001:2::2]:65536',
    '[2001:2::2]:070',
    '[fe80::1%eth0]:80',
    '[198.18.0.2]:80',
    '198.18.0.2',
    '198.18.0.2:',
    '198.18.0.2:x',
    '[::1]:80 ',
  ])('refuses the endpoint %j', (text) => {
    expect(parseEndpoint(text)).toBeNull();
  });
});
