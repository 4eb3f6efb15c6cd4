/** Read and write sysctls through /proc/sys (no sysctl binary needed). */

import { readFileSync, writeFileSync } from 'node:fs';
import { HostError } from './run.js';

function path(key: string): string {
  if (!/^[a-z0-9_.\-/]+$/i.test(key) || key.includes('..')) {
    throw new HostError('ERR_HOST_SYSCTL', `bad sysctl name "${key}"`);
  }
  // net.ipv4.conf.vpm0.rp_filter -> /proc/sys/net/ipv4/conf/vpm0/rp_filter. Interface
  // names may contain dots, so the caller passes them with '/' already (sysctl -w style).
  return `/proc/sys/${key.replace(/\./g, '/')}`;
}

export function readSysctl(key: string): string {
  try {
    return readFileSync(path(key), 'utf8').trim();
  } catch (e) {
    throw new HostError('ERR_HOST_SYSCTL', `cannot read sysctl ${key}: ${(e as Error).message}`);
  }
}

export function writeSysctl(key: string, value: string): void {
  try {
    writeFileSync(path(key), value);
  } catch (e) {
    throw new HostError(
      'ERR_HOST_SYSCTL',
      `cannot set sysctl ${key}=${value}: ${(e as Error).message}`,
    );
  }
}
