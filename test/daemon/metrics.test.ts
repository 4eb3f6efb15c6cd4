/**
 * The Prometheus metrics of the passive health check, read from a stats
 * snapshot as the daemon builds it.
 */

import { describe, expect, it } from 'vitest';
import { buildMetrics } from '../../src/daemon/metrics.js';
import { Counters } from '../../src/datapath/counters.js';

function snapshot(): Record<string, unknown> {
  const c = new Counters(1);
  c.instanceRefusals = 3;
  c.synRetried = 2;
  c.refusalsForwarded = 1;
  c.synNotKept = 4;
  const s = c.snapshot(['web']);
  return {
    ...s,
    health: {
      ...(s.health as Record<string, number>),
      synCopiesInUse: 5,
      instances: [
        { aid: 'web', instance: '198.19.255.1:19001', up: true, refusals: 0 },
        { aid: 'web', instance: '198.19.255.1:19002', up: false, refusals: 3 },
      ],
    },
    flowsActive: 0,
    udpFlowsActive: 0,
    flowsCapacity: 64,
    flowsEmbryonic: 7,
    embryonicCapacity: 16,
    embryonicEvicted: 42,
    uptimeMs: 1000,
    tun: { offloads: [] },
    pool: null,
  };
}

describe('health metrics', () => {
  it('exports each instance up or down, its refusals, and the check counters', async () => {
    const text = await buildMetrics(snapshot).metrics();
    expect(text).toContain('vpm_instance_up{aid="web",instance="198.19.255.1:19001"} 1');
    expect(text).toContain('vpm_instance_up{aid="web",instance="198.19.255.1:19002"} 0');
    expect(text).toContain(
      'vpm_instance_refusals_total{aid="web",instance="198.19.255.1:19002"} 3',
    );
    expect(text).toContain('vpm_health_total{kind="instance_refusal"} 3');
    expect(text).toContain('vpm_health_total{kind="syn_retried"} 2');
    expect(text).toContain('vpm_health_total{kind="refusal_forwarded"} 1');
    expect(text).toContain('vpm_health_total{kind="syn_not_kept"} 4');
    expect(text).toContain('vpm_syn_copies_in_use 5');
  });
});

describe('flood policy metrics', () => {
  it('exports the embryonic flows, their share and the evictions', async () => {
    const text = await buildMetrics(snapshot).metrics();
    expect(text).toContain('vpm_flows_embryonic 7');
    expect(text).toContain('vpm_flows_embryonic_capacity 16');
    expect(text).toContain('vpm_flows_embryonic_evicted_total 42');
  });
});
