/** `vpm stats` in its human form: the flood policy's line. */

import { describe, expect, it } from 'vitest';
import { Counters } from '../../src/datapath/counters.js';
import { formatStats } from '../../src/view/format.js';

describe('formatStats', () => {
  it('shows the embryonic flows, their share and the evictions', () => {
    const s = {
      ...new Counters(1).snapshot(['web']),
      flowsActive: 20,
      udpFlowsActive: 3,
      flowsCapacity: 64,
      flowsEmbryonic: 16,
      embryonicCapacity: 16,
      embryonicEvicted: 1984,
    };
    const lines = formatStats(s).split('\n');
    expect(lines).toContain('embryonic 16/16  evicted 1984');
    expect(lines[2]).toMatch(/^flows {3}active 20\/64 \(udp 3\)/);
  });
});
