/**
 * The daemon's control-socket commands (docs/control-protocol.md): inspection
 * (`ping`, `stats`, `flows`, `instances`), `reload`, and the virtual layer's
 * (`hello`, `services`, `bind`, `release`, `connect`, from the bind/connect
 * library and `vpm exec`). Each handler logs what it changed; the arguments have
 * passed their schema (src/control/requests.ts) before a handler runs.
 */

import type { Logger } from 'pino';
import { serviceAddresses } from '../config/summary.js';
import type { Config } from '../config/types.js';
import type { ControlServer } from '../control/server.js';
import type { FlowView, InstanceView } from '../view/views.js';
import type { Registry } from '../virtual/registry.js';
import type { ReloadResult } from './reload.js';

/** What the handlers need of the daemon. */
export interface ControlTarget {
  readonly log: Logger;
  /** The configuration running now (it changes on reload). */
  config(): Config;
  stats(): Record<string, unknown> | Promise<Record<string, unknown>>;
  flows(): FlowView[];
  /** `vpm instances`: static and registered instances, with their health. */
  instances(): InstanceView[];
  reload(): Promise<ReloadResult>;
  /** The registry of bound instances; null until the daemon has built it. */
  registry(): Registry | null;
  /** `vpm restart`: hand the TUN to the new daemon listening at `path`, then exit. */
  handover(path: string): Record<string, unknown>;
}

export function registerControlHandlers(c: ControlServer, d: ControlTarget): void {
  const log = d.log;
  // The control socket opens after the registry exists.
  const reg = () => d.registry()!;
  c.on('ping', () => ({ pong: true, pid: process.pid, version: 1 }));
  c.on('stats', () => d.stats());
  c.on('flows', () => d.flows());
  c.on('reload', () => d.reload());
  c.on('handover', (a) => {
    log.info({ event: 'handover_requested', path: a.path }, 'vpm restart asks for the TUN');
    return d.handover(a.path);
  });
  // The virtual layer (the bind/connect library and vpm exec): docs/control-protocol.md.
  c.on('hello', (a) => reg().hello(a));
  c.on('services', () =>
    d.config().services.map((s) => ({
      name: s.name,
      // The IPv4 address, or the IPv6 one of an IPv6-only service; both in `addresses`.
      address: serviceAddresses(s)[0]!,
      addresses: serviceAddresses(s),
      port: s.port,
      protocol: s.protocol,
    })),
  );
  c.on('bind', async (a, conn) => {
    try {
      const r = await reg().bind(conn, a);
      log.info(
        {
          event: 'instance_bind',
          aid: a.aid,
          vport: a.vport,
          addr: a.addr ?? '0.0.0.0',
          ...(a.v6only ? { v6only: true } : {}),
          port: r.port,
          pid: a.pid,
          fd: a.fd,
        },
        'bind registered',
      );
      return r;
    } catch (e) {
      const err = e as { code?: string; message: string };
      log.warn(
        {
          event: 'instance_bind_failed',
          aid: a.aid,
          vport: a.vport,
          addr: a.addr ?? '0.0.0.0',
          ...(a.v6only ? { v6only: true } : {}),
          pid: a.pid,
          code: err.code,
          err: err.message,
        },
        'bind refused',
      );
      throw e;
    }
  });
  c.on('release', (a, conn) => {
    const r = reg().release(conn, a);
    // A UDP client socket's close ends only its report: as quiet as the report.
    log[r.released === 0 && r.reports > 0 ? 'debug' : 'info'](
      {
        event: 'instance_release',
        aid: a.aid,
        vport: a.vport,
        port: a.port,
        pid: a.pid,
        fd: a.fd,
        released: r.released,
        reports: r.reports,
      },
      'bind released',
    );
    return r;
  });
  c.on('connect', (a, conn) => {
    const r = reg().connectReport(a, conn);
    log.debug(
      { event: 'client_connect', aid: a.aid, local: a.local, remote: a.remote, pid: a.pid },
      'connect reported',
    );
    return r;
  });
  c.on('instances', () => d.instances());
  c.onClose = (conn) => {
    const n = d.registry()?.connClosed(conn) ?? 0;
    if (n > 0)
      log.info({ event: 'instance_gone', registrations: n }, 'a registering program went away');
  };
}
