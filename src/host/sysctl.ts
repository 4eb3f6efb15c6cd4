/**
 * Read and write sysctls through /proc/sys (no sysctl binary needed), off the
 * event loop (node:fs/promises) like every other host change after start-up.
 */

import { readFile, writeFile } from 'node:fs/promises';
import { HostError } from './run.js';

function path(key: string): string {
  if (!/^[a-z0-9_.\-/]+$/i.test(key) || key.includes('..')) {
    throw new HostError('ERR_HOST_SYSCTL', `bad sysctl name "${key}"`);
  }
  // net.ipv4.conf.vpm0.rp_filter -> /proc/sys/net/ipv4/conf/vpm0/rp_filter. Interface
  // names may contain dots, so the caller passes them with '/' instead (sysctl -w
  // style): net.ipv4.conf.eth0/100.forwarding -> /proc/sys/net/ipv4/conf/eth0.100/forwarding.
  return `/proc/sys/${key
    .split('.')
    .map((part) => part.replace(/\//g, '.'))
    .join('/')}`;
}

export async function readSysctl(key: string): Promise<string> {
  try {
    return (await readFile(path(key), 'utf8')).trim();
  } catch (e) {
    throw new HostError('ERR_HOST_SYSCTL', `cannot read sysctl ${key}: ${(e as Error).message}`);
  }
}

export async function writeSysctl(key: string, value: string): Promise<void> {
  try {
    await writeFile(path(key), value);
  } catch (e) {
    throw new HostError(
      'ERR_HOST_SYSCTL',
      `cannot set sysctl ${key}=${value}: ${(e as Error).message}`,
    );
  }
}
