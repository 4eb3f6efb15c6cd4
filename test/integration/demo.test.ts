/**
 * The README's main command, `vpm demo`, run as a user runs it (the compiled CLI,
 * as root): it must succeed, say that each tenant reached its own instance, and
 * leave no namespace or process of its own behind.
 *
 *   tenant-a ──veth── host (vpm, instances A and B) ──veth── tenant-b
 */

import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/base/paths.js';

describe('vpm demo', () => {
  it('shows each tenant reaching its own instance on port 9000 and cleans up', () => {
    if (process.getuid?.() !== 0) throw new Error('this test needs root (network namespaces)');
    const cli = join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
    const r = spawnSync(process.execPath, [cli, 'demo'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /✔ tenant A \(198\.18\.1\.2\) connected to 198\.19\.0\.9:9000 and was answered by copy A .* saw the client as 198\.18\.1\.2:\d+/,
    );
    expect(r.stdout).toMatch(
      /✔ tenant B \(198\.18\.2\.2\) connected to 198\.19\.0\.9:9000 and was answered by copy B .* saw the client as 198\.18\.2\.2:\d+/,
    );
    expect(r.stdout).toMatch(
      /✔ tenant B over IPv6 \(2001:2:0:2::2\) connected to \[2001:2:0:9::9\]:9000 and was answered by copy B .* saw the client as \[2001:2:0:2::2\]:\d+/,
    );
    expect(r.stdout).toMatch(/✔ a client on the vpm host .* answered by copy A/);
    expect(r.stdout).not.toContain('✘');
    // Both copies asked for port 9000 under vpm exec, and say so themselves.
    expect(
      r.stdout.match(
        /vpm exec --aid tenant-[ab] -- node server\.js [AB] 9000 {3}→ the program says it listens on port 9000/g,
      ),
    ).toHaveLength(2);
    expect(r.stdout).toMatch(
      /vpm gave them real ports 200\d\d \(tenant-a\) and 200\d\d \(tenant-b\)$/m,
    );
    expect(r.stdout).toMatch(/4 flows/);
    const prefix = r.stdout.match(/namespaces (vpmt-\d+-[0-9a-f]+-demo)-/)?.[1];
    expect(prefix).toBeTruthy();
    const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    expect(left).not.toContain(prefix!);
  });
});
