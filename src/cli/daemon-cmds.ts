/**
 * `vpm up`, `vpm down`, `vpm flows`, `vpm stats`: the daemon and the commands that
 * read it over its control socket.
 */

import { existsSync, rmSync } from 'node:fs';
import type { Command } from 'commander';
import { defaultControlSocket, netnsLink } from '../base/netns.js';
import { loadConfig } from '../config/load.js';
import { controlRequest } from '../control/client.js';
import { Daemon, flowsFileFor, registryFileFor, stateFileFor } from '../daemon/daemon.js';
import { cleanStale, HostError, journalOwnerAlive, pidAlive, readJournal } from '../host/setup.js';
import { formatFlows, formatInstances, formatStats } from '../view/format.js';
import type { FlowView, InstanceView } from '../view/views.js';
import { CliError, UsageError } from './errors.js';

/**
 * The control socket of a daemon with the default TUN name in this network
 * namespace: the path its config would default to (base/netns.ts), so that
 * `ip netns exec X vpm stats` finds the daemon of namespace X.
 */
export const DEFAULT_SOCKET = defaultControlSocket('vpm0');

interface SocketOpts {
  socket?: string;
  config?: string;
  json?: boolean;
}

function socketPath(o: SocketOpts): string {
  if (o.socket) return o.socket;
  if (o.config) return loadConfig(o.config).control.socket;
  return DEFAULT_SOCKET;
}

function withSocketOptions(c: Command): Command {
  return c
    .option('-s, --socket <path>', `control socket of the daemon (default ${DEFAULT_SOCKET})`)
    .option('-c, --config <file>', 'take the control socket path from this config file')
    .option('--json', 'print JSON');
}

function requireRoot(what: string): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new CliError('ERR_PERMISSION', `${what} needs root (CAP_NET_ADMIN): run it as root`);
  }
}

export function registerDaemonCommands(program: Command): void {
  program
    .command('up')
    .description(
      'run the vpm daemon in the foreground: create the TUN, route, translate; Ctrl-C undoes it all. Over the state a crashed (or --keep-state) daemon left, it takes over its TUN and connections',
    )
    .requiredOption('-c, --config <file>', 'configuration file (see docs/configuration.md)')
    .option(
      '--keep-state',
      'on SIGTERM/SIGINT exit without undoing anything: the TUN, routes, rules and flows stay for the next vpm up (for supervisors; vpm down removes them)',
    )
    .action(async (o: { config: string; keepState?: boolean }) => {
      const cfg = loadConfig(o.config);
      requireRoot('vpm up');
      const d = new Daemon(cfg, undefined, { keepState: o.keepState === true });
      d.installSignals();
      await d.start();
      // Keep running: the TUN poll handle and the control socket hold the event loop.
      await new Promise<never>(() => {});
    });

  program
    .command('restart')
    .description(
      'take over from the daemon running with this config without resetting a connection: it hands its TUN over and exits, this process becomes the daemon (with another config file too: see docs/deployment.md)',
    )
    .requiredOption('-c, --config <file>', 'configuration file (see docs/configuration.md)')
    .option('--keep-state', 'as for vpm up: on SIGTERM/SIGINT leave everything for the next vpm up')
    .action(async (o: { config: string; keepState?: boolean }) => {
      const cfg = loadConfig(o.config);
      requireRoot('vpm restart');
      const d = new Daemon(cfg, undefined, { keepState: o.keepState === true, handover: true });
      d.installSignals();
      await d.start();
      await new Promise<never>(() => {});
    });

  program
    .command('down')
    .description(
      'stop the daemon of this config and undo everything (also after --keep-state), or remove what a crashed one left behind',
    )
    .requiredOption('-c, --config <file>', 'configuration file')
    .option('--timeout <ms>', 'how long to wait for the daemon to exit', '10000')
    .action(async (o: { config: string; timeout: string }) => {
      const cfg = loadConfig(o.config);
      requireRoot('vpm down');
      const timeout = Number(o.timeout);
      if (!Number.isFinite(timeout) || timeout <= 0)
        throw new UsageError(`--timeout: "${o.timeout}" is not a positive number of ms`);
      const file = stateFileFor(cfg);
      const j = readJournal(file);
      if (j && journalOwnerAlive(j)) {
        // Never stop the daemon of another network namespace that shares the path.
        if (netnsLink(j.pid) !== netnsLink('self'))
          throw new HostError(
            'ERR_ALREADY_RUNNING',
            `the daemon of ${file} (pid ${j.pid}) runs in another network namespace: run vpm down there, and give each daemon a control.socket of its own`,
          );
        process.kill(j.pid, 'SIGTERM');
        const deadline = Date.now() + timeout;
        while (pidAlive(j.pid) && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 50));
        if (pidAlive(j.pid))
          throw new CliError(
            'ERR_STOP_TIMEOUT',
            `daemon pid ${j.pid} did not exit within ${timeout} ms`,
          );
        process.stdout.write(`stopped vpm (pid ${j.pid})\n`);
      }
      // A daemon with --keep-state left its state on SIGTERM: undone here, like a crashed one's.
      const undone = await cleanStale(file);
      for (const u of undone) process.stdout.write(`undone: ${u}\n`);
      for (const f of [flowsFileFor(cfg), registryFileFor(cfg)])
        if (existsSync(f)) {
          rmSync(f, { force: true });
          process.stdout.write(`removed: ${f}\n`);
        }
      if (!j) process.stdout.write(`vpm is not running for ${cfg.tun.name}; nothing to undo\n`);
    });

  withSocketOptions(program.command('flows').description('list the flows of the running daemon'))
    .option('-w, --watch [ms]', 'redraw every ms milliseconds (default 1000) until Ctrl-C')
    .action(async (o: SocketOpts & { watch?: string | boolean }) => {
      const sock = socketPath(o);
      const show = async () => {
        const flows = (await controlRequest(sock, 'flows')) as FlowView[];
        return o.json ? JSON.stringify(flows) : formatFlows(flows);
      };
      if (o.watch === undefined) {
        process.stdout.write(`${await show()}\n`);
        return;
      }
      const every = o.watch === true ? 1000 : Number(o.watch);
      if (!Number.isInteger(every) || every < 50)
        throw new UsageError(`--watch: "${o.watch}" is not a number of ms >= 50`);
      const tty = process.stdout.isTTY === true;
      for (;;) {
        const text = await show();
        // On a terminal, redraw in place; otherwise (a pipe, --json) one snapshot after another.
        process.stdout.write(
          tty && !o.json ? `\x1b[H\x1b[2J${new Date().toISOString()}\n${text}\n` : `${text}\n`,
        );
        await new Promise((r) => setTimeout(r, every));
      }
    });

  withSocketOptions(
    program
      .command('instances')
      .description('instances of each AID: static ones and those registered by vpm exec'),
  ).action(async (o: SocketOpts) => {
    const list = (await controlRequest(socketPath(o), 'instances')) as InstanceView[];
    process.stdout.write(o.json ? `${JSON.stringify(list)}\n` : `${formatInstances(list)}\n`);
  });

  withSocketOptions(program.command('stats').description('counters of the running daemon')).action(
    async (o: SocketOpts) => {
      const s = (await controlRequest(socketPath(o), 'stats')) as Record<string, unknown>;
      process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : `${formatStats(s)}\n`);
    },
  );
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'show vpm at work in a sandbox of network namespaces (needs root; removes everything after)',
    )
    .action(async () => {
      const { runDemo } = await import('../demo/demo.js');
      process.exitCode = await runDemo();
    });
}
