/*
 * Offloads end to end: the TUN with virtio-net headers really carries 64 KiB
 * super-packets through vpm, and the wire still carries MSS-sized segments with
 * correct checksums; `vpm dump` captures of an offloaded transfer read in tcpdump
 * and tshark; and `tun.offloads: "off"` carries the same transfer without them.
 *
 *     ns a (tenant)                        ns host
 *  ┌────────────────────┐      veth      ┌──────────────────────────────────────────────┐
 *  │ a0 198.18.1.2/24   ├════════════════┤ ha 198.18.1.1/24 (tso, gso, tx csum off)     │
 *  │ (gro, rx off)      │                │ vpm up: vpm0 (TUN, offloads "auto" or "off") │
 *  │ tcpdump -i a0      │                │ instance 198.19.255.1:19001 (node)           │
 *  │ client: 100 MB up, │                │ vpm dump -i vpm0 (second transfer)           │
 *  │ 100 MB down        │                └──────────────────────────────────────────────┘
 *  └────────────────────┘
 *
 * The host's veth end has its own offloads off (as kernel-checksums.test.ts
 * does): what leaves it is segmented and checksummed in software, so a capture
 * on a0 shows wire segments, and the tenant's kernel verifies every checksum
 * (rx off) — the transfer only completes if vpm's rewrites of super-packets
 * (partial checksums) come out right once the kernel finishes them.
 */

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PcapRecord, readPcapFile } from '../../src/pcap/reader.js';
import { checkPacket, PacketInfo } from '../../src/wire/parse.js';
import { Verify, verifyChecksums } from '../../src/wire/verify.js';
import { NetLab, requireCommands, requireRoot, runCommand } from '../support/netns.js';
import { VpmDaemon, type VpmStats, vpmArgv, withTimeout } from '../support/vpm.js';
import { runClient, startInstance, type Topology, TUN_ADDR, twoTenants, VIP } from './topology.js';

const MB = 1_000_000;
const CONFIG = (offloads: 'auto' | 'off') => ({
  tun: { offloads },
  services: [{ name: 'web', address: VIP, port: 9000 }],
  applications: [{ aid: 'a', instances: [{ port: 19001 }] }],
  default: { aid: 'a' },
});

/** The offload counters of `vpm stats --json` (src/datapath/counters.ts). */
interface Offload {
  superPacketsIn: number;
  segmentsIn: number;
  superPacketsOut: number;
  segmentsOut: number;
  gsoRefused: number;
}
const offload = (s: VpmStats) => s.offload as Offload;

/** Every IPv4/TCP frame of an Ethernet capture: its IP length, and whether its checksums verify. */
function frames(file: string): { ipLen: number; ok: boolean }[] {
  const r = readPcapFile(file);
  const rec = new PcapRecord();
  const info = new PacketInfo();
  const out: { ipLen: number; ok: boolean }[] = [];
  while (r.next(rec)) {
    // LINKTYPE_ETHERNET: IPv4 after the 14-byte header (the tenant has IPv6 off).
    if (rec.caplen < 14 || rec.data[12] !== 0x08 || rec.data[13] !== 0x00) continue;
    const ip = rec.data.subarray(14, rec.caplen);
    const ok = checkPacket(ip, 0, ip.length, info) === 0 && verifyChecksums(ip, info) === Verify.OK;
    out.push({ ipLen: info.ipTotalLen, ok });
  }
  return out;
}

for (const mode of ['auto', 'off'] as const) {
  describe(`offloads "${mode}": a bulk transfer through vpm`, () => {
    let lab: NetLab;
    let topo: Topology;
    let vpm: VpmDaemon;

    beforeAll(async () => {
      requireRoot();
      requireCommands('ip', 'ethtool', 'tcpdump', 'tshark');
      lab = new NetLab(`offload${mode}`);
      topo = twoTenants(lab);
      lab.setOffloads(topo.host, 'ha', false);
      lab.setOffloads(topo.tenantA, 'a0', false);
      vpm = await VpmDaemon.start(lab, topo.host, CONFIG(mode));
      await startInstance(lab, topo.host, 'a', 19001);
    });

    afterAll(async () => {
      if (vpm?.alive) await vpm.stop().catch(() => undefined);
      await lab?.cleanup();
    });

    it('100 MB each way byte-identical; the wire shows MSS-sized segments whose checksums verify', async () => {
      const cap = join(lab.tempDir(), 'a0.pcap');
      // The first 4000 frames in full: enough to see data segments both ways.
      const dump = lab.spawn(topo.tenantA, 'tcpdump', [
        '-i',
        'a0',
        '--immediate-mode',
        '-U',
        '-n',
        '-c',
        '4000',
        '-Z',
        'root',
        '-w',
        cap,
        'tcp',
      ]);
      await lab.waitForOutput(dump, /listening on a0/, { stream: 'stderr', timeoutMs: 10_000 });
      const before = await vpm.stats();
      const r = await runClient(
        lab,
        topo.tenantA,
        { mode: 'xfer', up: 100 * MB, down: 100 * MB, timeoutMs: 60_000 },
        90_000,
      );
      expect(r.event, r.output).toBe('done');
      const trailer = r.trailer as Record<string, unknown>;
      expect(r.sentSha).toBe(trailer.recvSha);
      expect(r.recvSha).toBe(trailer.sentSha);
      await withTimeout(lab.exited(dump), 15_000, 'tcpdump to capture 4000 frames');

      const after = await vpm.stats();
      expect(after.packetsIn).toBe(after.packetsOut + after.dropsTotal + after.fragmentsHeld);
      const d = {
        superIn: offload(after).superPacketsIn - offload(before).superPacketsIn,
        superOut: offload(after).superPacketsOut - offload(before).superPacketsOut,
        segIn: offload(after).segmentsIn - offload(before).segmentsIn,
      };
      const tun = after.tun as { offloads: string[] };
      if (mode === 'auto') {
        // Super-packets really crossed vpm: many segments per packet read.
        expect(tun.offloads).toEqual(expect.arrayContaining(['csum', 'tso4', 'tso6']));
        expect(d.superIn).toBeGreaterThan(100);
        expect(d.superOut).toBe(d.superIn);
        expect(d.segIn / d.superIn).toBeGreaterThan(4);
        expect(offload(after).gsoRefused).toBe(0);
        expect(vpm.logs().find((l) => l.event === 'tun_offloads')).toMatchObject({
          mode: 'auto',
          vnetHdr: true,
        });
      } else {
        expect(tun.offloads).toEqual([]);
        expect(d.superIn).toBe(0);
        expect(d.superOut).toBe(0);
        expect(vpm.logs().find((l) => l.event === 'tun_offloads')).toMatchObject({
          mode: 'off',
          vnetHdr: false,
        });
      }

      const f = frames(cap);
      expect(f.length).toBe(4000);
      const big = f.filter((x) => x.ipLen > 1500);
      expect(big, 'frames larger than the MTU on the wire').toEqual([]);
      expect(f.filter((x) => !x.ok).length, 'frames whose checksums do not verify').toBe(0);
      // Data segments of a full MSS (1500-byte IP packets) in the capture.
      expect(f.filter((x) => x.ipLen === 1500).length).toBeGreaterThan(1000);
    });

    it('vpm dump of a bulk response, five times: both sides of every translation, nothing lost, read by tcpdump and tshark', async () => {
      // Every packet crosses the TUN twice, as sent and as vpm rewrote it, so a
      // complete capture holds as many packets on the virtual service's side as
      // on the instance's, each way; the summary gives the capture's own count.
      for (let run = 0; run < 5; run++) {
        const file = join(lab.tempDir(), `tun-${run}.pcap`);
        const dump = lab.spawn(topo.host, process.execPath, [
          ...vpmArgv(),
          'dump',
          '--config',
          vpm.configPath,
          '-w',
          file,
        ]);
        await lab.waitForOutput(dump, /listening on/, { stream: 'stderr', timeoutMs: 15_000 });
        const r = await runClient(lab, topo.tenantA, { mode: 'xfer', up: 100_000, down: 4 * MB });
        expect(r.event, r.output).toBe('done');
        process.kill(dump.pid!, 'SIGTERM');
        const exit = await withTimeout(lab.exited(dump), 15_000, 'vpm dump to exit');
        const stderr = lab.output(dump).stderr;
        expect(exit.code, stderr).toBe(0);
        const m =
          /^(\d+) packets captured; (\d+) received by the filter, 0 dropped by the kernel$/m.exec(
            stderr,
          );
        expect(m, stderr).not.toBeNull();
        expect(Number(m![1])).toBe(Number(m![2]));

        const tshark = runCommand('tshark', [
          '-r',
          file,
          '-T',
          'fields',
          '-e',
          'ip.src',
          '-e',
          'ip.dst',
          '-e',
          'tcp.len',
        ]);
        const rows = tshark
          .trim()
          .split('\n')
          .map((l) => l.split('\t'))
          .map(([src, dst, len]) => ({ src, dst, len: Number(len) }));
        expect(rows.length).toBe(Number(m![1]));
        const count = (src: string, dst: string) =>
          rows.filter((x) => x.src === src && x.dst === dst).length;
        const bytes = (src: string) =>
          rows.filter((x) => x.src === src).reduce((a, x) => a + x.len, 0);
        const client = '198.18.1.2';
        expect(count(client, VIP), `run ${run}`).toBe(count(client, TUN_ADDR));
        expect(count(VIP, client), `run ${run}`).toBe(count(TUN_ADDR, client));
        expect(count(VIP, client)).toBeGreaterThan(0);
        expect(bytes(VIP)).toBe(bytes(TUN_ADDR));
        expect(bytes(VIP)).toBeGreaterThanOrEqual(4 * MB);
        // With offloads the TUN carries super-packets, and the capture shows them as such.
        const longest = Math.max(...rows.map((x) => x.len));
        if (mode === 'auto') expect(longest).toBeGreaterThan(1460);
        else expect(longest).toBeLessThanOrEqual(1460);
        expect(runCommand('tcpdump', ['-r', file, '-nn']).trim().split('\n')).toHaveLength(
          rows.length,
        );
      }
    });
  });
}
