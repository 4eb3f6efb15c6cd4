import { describe, expect, it } from 'vitest';
import { currentNetns, defaultControlSocket } from '../../src/base/netns.js';

describe('defaultControlSocket', () => {
  it('is /run/vpm/<tun>.sock in the initial network namespace', () => {
    expect(defaultControlSocket('vpm0', { initial: true, name: null, inode: '4026531840' })).toBe(
      '/run/vpm/vpm0.sock',
    );
  });

  it('is under the namespace’s ip netns name in another, else under its inode', () => {
    expect(
      defaultControlSocket('vpm0', { initial: false, name: 'blue', inode: '4026532999' }),
    ).toBe('/run/vpm/netns/blue/vpm0.sock');
    expect(defaultControlSocket('mux7', { initial: false, name: null, inode: '4026532999' })).toBe(
      '/run/vpm/netns/net-4026532999/mux7.sock',
    );
  });

  it('reads this process’s namespace from /proc', () => {
    const ns = currentNetns();
    expect(ns.inode).toMatch(/^\d+$/);
    expect(defaultControlSocket('vpm0')).toBe(defaultControlSocket('vpm0', ns));
  });
});
