import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseProcNetDev, readDeviceCounters } from '../../src/daemon/device-counters.js';

// /proc/net/dev as Linux prints it (two header lines, then one line a device).
const TEXT = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  vpm0: 61440000 1040000    1    2    3     0          0         0 67200000 1050000    4 1560000    5     0       0          0
vpm10:       7       1    0    0    0     0          0         0        0       0    0    0    0     0       0          0
`;

describe('the TUN device counters (/proc/net/dev)', () => {
  it('reads one device by its exact name: rx as written by vpm, tx as read by vpm', () => {
    expect(parseProcNetDev(TEXT, 'vpm0')).toEqual({
      name: 'vpm0',
      rxBytes: 61440000,
      rxPackets: 1040000,
      rxErrors: 1,
      rxDropped: 2,
      rxFifo: 3,
      txBytes: 67200000,
      txPackets: 1050000,
      txErrors: 4,
      txDropped: 1560000,
      txFifo: 5,
    });
    expect(parseProcNetDev(TEXT, 'vpm10')?.rxBytes).toBe(7);
    expect(parseProcNetDev(TEXT, 'vpm1')).toBeNull();
    expect(parseProcNetDev(' vpm0: 1 2 3\n', 'vpm0')).toBeNull();
  });

  it('reads the file without blocking, and null where it cannot', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vpm-netdev-'));
    try {
      const file = join(dir, 'dev');
      writeFileSync(file, TEXT);
      expect((await readDeviceCounters('vpm0', file))?.txDropped).toBe(1560000);
      expect(await readDeviceCounters('vpm0', join(dir, 'missing'))).toBeNull();
      // This process's own namespace always has lo.
      expect((await readDeviceCounters('lo'))?.name).toBe('lo');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
