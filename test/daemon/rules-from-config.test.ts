import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config.js';
import { hostPlanFromConfig, otherInstanceAddrs } from '../../src/daemon/rules-from-config.js';

const load = (instances: Record<string, unknown>[][]) =>
  parseConfig(
    {
      services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
      applications: instances.map((inst, i) => ({ aid: `a${i}`, instances: inst })),
      default: { refuse: true },
      control: { socket: '/run/vpm/test.sock' },
    },
    'vpm.json',
  );

describe('otherInstanceAddrs', () => {
  it('lists the instance addresses other than tun.address and the wildcard, with their ports merged', () => {
    const cfg = load([
      [{ port: 19001 }, { address: '198.18.1.1', port: 19003 }],
      [
        { address: '198.18.1.1', port: 19004 },
        { address: '198.18.2.1', port: 19010 },
        { address: '198.19.255.1', port: 19011 },
        { address: '198.18.1.1', port: 19008 },
      ],
    ]);
    expect(otherInstanceAddrs(cfg)).toEqual([
      {
        addr: '198.18.1.1',
        ports: [
          { lo: 19003, hi: 19004 },
          { lo: 19008, hi: 19008 },
        ],
      },
      { addr: '198.18.2.1', ports: [{ lo: 19010, hi: 19010 }] },
    ]);
    expect(hostPlanFromConfig(cfg, 'vpm0').otherInstanceAddrs).toEqual(otherInstanceAddrs(cfg));
  });

  it('is empty when every instance is on tun.address', () => {
    expect(otherInstanceAddrs(load([[{ port: 19001 }], [{ port: 19002 }]]))).toEqual([]);
  });
});
