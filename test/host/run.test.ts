/**
 * run(): host commands without blocking the event loop, and the errors that name
 * the command. Harmless commands only (sh, a name that does not exist).
 */

import { describe, expect, it } from 'vitest';
import { run } from '../../src/host/run.js';

describe('run', () => {
  it('resolves to the command’s stdout', async () => {
    await expect(run('sh', ['-c', 'echo out; echo err >&2'])).resolves.toBe('out\n');
  });

  it('lets the event loop run while the command does', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    try {
      // A blocking run would return after the sleep with no tick in between.
      await run('sh', ['-c', 'sleep 0.3']);
      expect(ticks).toBeGreaterThanOrEqual(2);
    } finally {
      clearInterval(timer);
    }
  });

  it('gives the command an empty stdin', async () => {
    await expect(run('sh', ['-c', 'cat; echo end'])).resolves.toBe('end\n');
  });

  it('rejects with ERR_HOST_COMMAND, the command line and its stderr', async () => {
    await expect(
      run('sh', ['-c', 'echo "RTNETLINK answers: File exists" >&2; exit 2']),
    ).rejects.toMatchObject({
      name: 'HostError',
      code: 'ERR_HOST_COMMAND',
      exitCode: 1,
      message:
        'sh -c echo "RTNETLINK answers: File exists" >&2; exit 2 failed: RTNETLINK answers: File exists',
    });
  });

  it('rejects with ERR_HOST_TOOL when the program is not installed', async () => {
    await expect(run('vpm-no-such-tool', ['x'])).rejects.toMatchObject({
      code: 'ERR_HOST_TOOL',
      message: 'vpm-no-such-tool not found: install iproute2',
    });
  });
});
