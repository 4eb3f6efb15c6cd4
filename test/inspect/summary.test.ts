import { describe, expect, it } from 'vitest';
import { linkTypeFromDlt } from '../../src/inspect/capture.js';
import { describePacket, packetText, tcpFlagsText, timeText } from '../../src/inspect/summary.js';
import {
  LINKTYPE_ETHERNET,
  LINKTYPE_IEEE802_11_RADIOTAP,
  LINKTYPE_IPV4,
  LINKTYPE_LINUX_SLL,
  LINKTYPE_LINUX_SLL2,
  LINKTYPE_NULL,
  LINKTYPE_RAW,
} from '../../src/pcap/format.js';
import { icmp4, ip4, ip6, ipv4, tcp4, tcp6, udp4, unhex } from '../support/builder.js';

const A = ip4('198.18.1.2');
const V = ip4('198.19.0.9');
const line = (b: Uint8Array, link = LINKTYPE_RAW) => packetText(describePacket(b, link));

describe('one line per packet', () => {
  it('TCP: tuple, tcpdump flags, seq, ack only with ACK, payload length', () => {
    const syn = tcp4({ src: A, dst: V }, { srcPort: 40000, dstPort: 9000, seq: 1234, flags: 0x02 });
    expect(line(syn)).toBe('TCP 198.18.1.2:40000 > 198.19.0.9:9000 [S] seq 1234 len 0');
    const data = tcp4(
      { src: V, dst: A },
      {
        srcPort: 9000,
        dstPort: 40000,
        seq: 0xffffffff,
        ack: 1235,
        flags: 0x18,
        payload: new Uint8Array(100),
      },
    );
    expect(line(data)).toBe(
      'TCP 198.19.0.9:9000 > 198.18.1.2:40000 [P.] seq 4294967295 ack 1235 len 100',
    );
  });

  it('UDP, ICMP, IPv6, other protocols and fragments', () => {
    expect(
      line(udp4({ src: A, dst: V }, { srcPort: 5353, dstPort: 53, payload: unhex('aabb') })),
    ).toBe('UDP 198.18.1.2:5353 > 198.19.0.9:53 len 2');
    expect(line(icmp4({ src: A, dst: V }, { type: 8, rest: 1, data: new Uint8Array(56) }))).toBe(
      'ICMP 198.18.1.2 > 198.19.0.9 type 8 code 0 len 56',
    );
    expect(
      line(
        tcp6(
          { src: ip6('2001:db8::1'), dst: ip6('2001:db8::2') },
          { srcPort: 1, dstPort: 2, flags: 0x11 },
        ),
      ),
    ).toBe('TCP [2001:db8::1]:1 > [2001:db8::2]:2 [F.] seq 0 ack 0 len 0');
    expect(line(ipv4({ src: A, dst: V, protocol: 47 }, new Uint8Array(24)))).toBe(
      'IP 198.18.1.2 > 198.19.0.9 proto 47 len 24',
    );
    expect(
      line(ipv4({ src: A, dst: V, protocol: 6, mf: true, df: false }, new Uint8Array(16))),
    ).toBe('IP 198.18.1.2 > 198.19.0.9 proto 6 frag off 0 + len 16');
  });

  it('malformed packets say why checkPacket refused them, and nothing more', () => {
    const syn = tcp4({ src: A, dst: V }, { srcPort: 40000, dstPort: 9000, flags: 0x02 });
    expect(line(syn.subarray(0, 30))).toBe('malformed: bad_total_len (30 bytes)');
    expect(line(syn.subarray(0, 10))).toBe('malformed: truncated (10 bytes)');
    const v5 = syn.slice();
    v5[0] = 0x55;
    expect(line(v5)).toBe('malformed: bad_version (40 bytes)');
    const badOff = syn.slice();
    badOff[20 + 12] = 0x20; // data offset 2
    expect(line(badOff)).toBe('malformed: bad_data_offset (40 bytes)');
    expect(line(new Uint8Array(0))).toBe('non-IP frame (0 bytes)');
  });

  it('finds the IP header behind a link header', () => {
    const syn = tcp4({ src: A, dst: V }, { srcPort: 40000, dstPort: 9000, flags: 0x02 });
    const eth = new Uint8Array(14 + syn.length);
    eth.set(unhex('0800'), 12);
    eth.set(syn, 14);
    expect(line(eth, LINKTYPE_ETHERNET)).toBe(
      'TCP 198.18.1.2:40000 > 198.19.0.9:9000 [S] seq 0 len 0',
    );
    const arp = new Uint8Array(42);
    arp.set(unhex('0806'), 12);
    expect(line(arp, LINKTYPE_ETHERNET)).toBe('non-IP frame (42 bytes)');
  });

  it('spells flags in tcpdump order', () => {
    expect(tcpFlagsText(0)).toBe('none');
    expect(tcpFlagsText(0x12)).toBe('S.');
    expect(tcpFlagsText(0x19)).toBe('FP.');
    expect(tcpFlagsText(0x04)).toBe('R');
    expect(tcpFlagsText(0xff)).toBe('FSRP.UEW');
  });

  it('prints local time of day with microseconds', () => {
    const d = new Date(2026, 0, 2, 3, 4, 5, 678);
    expect(timeText(d.getTime() + 0.9)).toBe('03:04:05.678900');
    expect(timeText(d.getTime())).toBe('03:04:05.678000');
  });
});

describe('link types of a capture', () => {
  it("maps libpcap's DLT values to the LINKTYPE of a pcap file", () => {
    expect(linkTypeFromDlt(1)).toBe(LINKTYPE_ETHERNET);
    expect(linkTypeFromDlt(0)).toBe(LINKTYPE_NULL);
    expect(linkTypeFromDlt(113)).toBe(LINKTYPE_LINUX_SLL);
    expect(linkTypeFromDlt(127)).toBe(LINKTYPE_IEEE802_11_RADIOTAP);
    // DLT_RAW's platform values become LINKTYPE_RAW; the rest keep their number.
    expect(linkTypeFromDlt(12)).toBe(LINKTYPE_RAW);
    expect(linkTypeFromDlt(14)).toBe(LINKTYPE_RAW);
    expect(linkTypeFromDlt(228)).toBe(LINKTYPE_IPV4);
    expect(linkTypeFromDlt(276)).toBe(LINKTYPE_LINUX_SLL2);
    expect(linkTypeFromDlt(-1)).toBeNull();
  });
});
