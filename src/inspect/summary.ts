/**
 * One line of text per captured packet, for `vpm dump` without -w.
 *
 * A capture is untrusted input like any other: every frame goes through
 * `ipHeaderOffset` (the link layer) and `checkPacket` (the one checked entry
 * point), and only fields that `checkPacket` vouched for are read. A frame it
 * refuses is shown as "malformed: <reason>", never half-decoded.
 */

import { LINKTYPE_IPV4, LINKTYPE_RAW } from '../pcap/format.js';
import { ipHeaderOffset } from '../pcap/reader.js';
import { ipv4ToString, ipv6ToString } from '../wire/address.js';
import { get32 } from '../wire/bytes.js';
import { IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP } from '../wire/ipv4.js';
import { CHECK_NAMES, Check, checkPacket, PacketInfo } from '../wire/parse.js';
import {
  TCP_ACK,
  TCP_CWR,
  TCP_ECE,
  TCP_FIN,
  TCP_OFF_ACK,
  TCP_OFF_SEQ,
  TCP_PSH,
  TCP_RST,
  TCP_SYN,
  TCP_URG,
} from '../wire/tcp.js';

/** IPv6 header offsets of the addresses (RFC 8200). */
const IPV6_OFF_SRC = 8;
const IPV6_OFF_DST = 24;
const ICMP_OFF_TYPE = 0;
const ICMP_OFF_CODE = 1;

/** What a line says about one packet: a plain record, made once per packet. */
export interface PacketFacts {
  /** False for a frame that is not IP or that `checkPacket` refused. */
  ok: boolean;
  /** Why not ok: a `CHECK_NAMES` entry, or NOT_IP. */
  reason: string;
  /** Bytes captured. */
  captured: number;
  /** 'TCP', 'UDP', 'ICMP', 'ICMP6', or 'IP' (anything else, and fragments). */
  proto: string;
  protocol: number;
  src: string;
  dst: string;
  /** -1 when the packet has no ports (not TCP/UDP, or a fragment). */
  srcPort: number;
  dstPort: number;
  /** TCP flag bits; 0 otherwise. */
  flags: number;
  seq: number;
  ack: number;
  /** TCP/UDP payload, or the IP payload for anything else. */
  len: number;
  /** ICMP type and code; -1 otherwise. */
  icmpType: number;
  icmpCode: number;
  /** "frag off N" for an IPv4 fragment, '' otherwise. */
  fragment: string;
}

const info = new PacketInfo();

/** The reason of a frame that carries no IP packet (ARP on an Ethernet link, say). */
export const NOT_IP = 'not IP';

/** Decode a captured frame of `linkType` (LINKTYPE_*). Never throws. */
export function describePacket(frame: Uint8Array, linkType: number): PacketFacts {
  const facts: PacketFacts = {
    ok: false,
    reason: '',
    captured: frame.length,
    proto: 'IP',
    protocol: -1,
    src: '',
    dst: '',
    srcPort: -1,
    dstPort: -1,
    flags: 0,
    seq: 0,
    ack: 0,
    len: 0,
    icmpType: -1,
    icmpCode: -1,
    fragment: '',
  };
  let ipOff = ipHeaderOffset(linkType, frame);
  if (ipOff < 0) {
    // On a raw-IP link the frame is the IP packet: let checkPacket say what is wrong.
    if (frame.length > 0 && (linkType === LINKTYPE_RAW || linkType === LINKTYPE_IPV4)) ipOff = 0;
    else {
      facts.reason = NOT_IP;
      return facts;
    }
  }
  const code = checkPacket(frame, ipOff, frame.length - ipOff, info);
  if (code !== Check.OK) {
    facts.reason = CHECK_NAMES[code] ?? `check ${code}`;
    return facts;
  }
  facts.ok = true;
  facts.protocol = info.protocol;
  if (info.version === 4) {
    facts.src = ipv4ToString(info.srcAddr);
    facts.dst = ipv4ToString(info.dstAddr);
  } else {
    facts.src = `[${ipv6ToString(frame, ipOff + IPV6_OFF_SRC)}]`;
    facts.dst = `[${ipv6ToString(frame, ipOff + IPV6_OFF_DST)}]`;
  }
  if (info.isFragment) {
    facts.fragment = `frag off ${info.fragOffset}${info.moreFragments ? ' +' : ''}`;
    facts.len = info.ipTotalLen - info.ipHeaderLen;
    return facts;
  }
  if (info.l4Off < 0) {
    facts.len = info.payloadLen;
    return facts;
  }
  facts.len = info.payloadLen;
  switch (info.protocol) {
    case IPPROTO_TCP:
      facts.proto = 'TCP';
      facts.srcPort = info.srcPort;
      facts.dstPort = info.dstPort;
      facts.flags = info.tcpFlags;
      facts.seq = get32(frame, info.l4Off + TCP_OFF_SEQ);
      facts.ack = get32(frame, info.l4Off + TCP_OFF_ACK);
      break;
    case IPPROTO_UDP:
      facts.proto = 'UDP';
      facts.srcPort = info.srcPort;
      facts.dstPort = info.dstPort;
      break;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6:
      facts.proto = info.protocol === IPPROTO_ICMP ? 'ICMP' : 'ICMP6';
      facts.icmpType = frame[info.l4Off + ICMP_OFF_TYPE]!;
      facts.icmpCode = frame[info.l4Off + ICMP_OFF_CODE]!;
      break;
  }
  return facts;
}

/** tcpdump's spelling of TCP flags: F S R P . U E W, in that order; "none" for none. */
export function tcpFlagsText(flags: number): string {
  let s = '';
  if (flags & TCP_FIN) s += 'F';
  if (flags & TCP_SYN) s += 'S';
  if (flags & TCP_RST) s += 'R';
  if (flags & TCP_PSH) s += 'P';
  if (flags & TCP_ACK) s += '.';
  if (flags & TCP_URG) s += 'U';
  if (flags & TCP_ECE) s += 'E';
  if (flags & TCP_CWR) s += 'W';
  return s === '' ? 'none' : s;
}

/** "addr:port", or just "addr" when the packet has no ports. */
export function endpointText(addr: string, port: number): string {
  return port < 0 ? addr : `${addr}:${port}`;
}

/** "src:port > dst:port". */
export function tupleText(f: PacketFacts): string {
  return `${endpointText(f.src, f.srcPort)} > ${endpointText(f.dst, f.dstPort)}`;
}

/** What follows the addresses: TCP flags, seq/ack and payload length, and so on. */
export function detailText(f: PacketFacts): string {
  if (f.proto === 'TCP') {
    const ack = f.flags & TCP_ACK ? ` ack ${f.ack}` : '';
    return `[${tcpFlagsText(f.flags)}] seq ${f.seq}${ack} len ${f.len}`;
  }
  if (f.proto === 'ICMP' || f.proto === 'ICMP6')
    return `type ${f.icmpType} code ${f.icmpCode} len ${f.len}`;
  if (f.fragment) return `proto ${f.protocol} ${f.fragment} len ${f.len}`;
  if (f.proto === 'IP') return `proto ${f.protocol} len ${f.len}`;
  return `len ${f.len}`;
}

/** The line for one packet, without the time: "TCP a:p > b:q [S] seq 1 len 0". */
export function packetText(f: PacketFacts): string {
  if (!f.ok && f.reason === NOT_IP) return `non-IP frame (${f.captured} bytes)`;
  if (!f.ok) return `malformed: ${f.reason} (${f.captured} bytes)`;
  return `${f.proto} ${tupleText(f)} ${detailText(f)}`;
}

const pad2 = (n: number) => String(n).padStart(2, '0');

/** Local time of day with microseconds, as tcpdump prints it: "13:04:05.123456". */
export function timeText(ms: number): string {
  const us = Math.round(ms * 1000);
  const d = new Date(Math.floor(us / 1000));
  const frac = String(((us % 1_000_000) + 1_000_000) % 1_000_000).padStart(6, '0');
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}.${frac}`;
}
