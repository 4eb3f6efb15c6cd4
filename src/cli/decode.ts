/**
 * `vpm decode HEX`: run one packet (hex, e.g. from tcpdump -xx without the link
 * header) through the checked entry point and the checksum validation, and print
 * what vpm sees. For debugging and for users checking what a drop reason means.
 */

import type { Command } from 'commander';
import { ipv4ToString, ipv6ToString } from '../wire/address.js';
import { fromHex } from '../wire/bytes.js';
import { CHECK_NAMES, Check, checkPacket, PacketInfo } from '../wire/parse.js';
import { Verify, verifyChecksums } from '../wire/verify.js';
import { UsageError } from './errors.js';

const VERIFY_NAMES = ['ok', 'bad_ip_checksum', 'bad_l4_checksum'];

export function decodePacket(bytes: Uint8Array): Record<string, unknown> {
  const info = new PacketInfo();
  const code = checkPacket(bytes, 0, bytes.length, info);
  if (code !== Check.OK)
    return { accepted: false, reason: CHECK_NAMES[code], length: bytes.length };
  const v4 = info.version === 4;
  return {
    accepted: true,
    version: info.version,
    length: info.ipTotalLen,
    src: v4 ? ipv4ToString(info.srcAddr) : ipv6ToString(bytes, 8),
    dst: v4 ? ipv4ToString(info.dstAddr) : ipv6ToString(bytes, 24),
    protocol: info.protocol,
    fragment: info.isFragment ? { more: info.moreFragments, offset: info.fragOffset } : null,
    srcPort: info.l4Off >= 0 ? info.srcPort : null,
    dstPort: info.l4Off >= 0 ? info.dstPort : null,
    tcpFlags: info.protocol === 6 && info.l4Off >= 0 ? info.tcpFlags : null,
    payloadLen: info.payloadLen,
    checksums: VERIFY_NAMES[verifyChecksums(bytes, info)] ?? String(Verify.OK),
  };
}

export function registerDecode(program: Command): void {
  program
    .command('decode')
    .description('decode one IP packet given as hex and validate its checksums')
    .argument('<hex>', 'the packet, starting at the IP header (spaces allowed)')
    .option('--json', 'print JSON')
    .action((hex: string, opts: { json?: boolean }) => {
      let bytes: Uint8Array;
      try {
        bytes = fromHex(hex);
      } catch (e) {
        throw new UsageError(`decode: ${(e as Error).message}`);
      }
      const r = decodePacket(bytes);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(r)}\n`);
      } else {
        for (const [k, v] of Object.entries(r)) {
          process.stdout.write(
            `${k.padEnd(10)} ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}\n`,
          );
        }
      }
      if (!r.accepted || r.checksums !== 'ok') process.exitCode = 1;
    });
}
