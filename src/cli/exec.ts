/**
 * `vpm exec --aid AID [-c CONFIG | -s SOCKET] [--] command [args...]`: run an
 * unmodified program in vpm's virtual layer. The program binds its usual port
 * (say 9000); the interception library (native/src/preload/, LD_PRELOAD) gets
 * it a real port from the daemon's pool and binds that instead, and the
 * program still sees 9000. Several programs, or copies of one, can all "bind
 * 9000" this way; the daemon sends each connection to the right one by AID.
 *
 * It asks the daemon `hello` first, so that a daemon that is not running, an
 * unknown AID or a daemon without a pool fail here, with a clear message and
 * exit status 1, not as a puzzling bind error inside the program.
 */

import { resolve } from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.js';
import { controlRequest } from '../control/client.js';
import { endLikeChild, runChild } from '../exec/child.js';
import {
  DEFAULT_TIMEOUT_MS,
  ExecError,
  execEnvironment,
  parseHello,
  portsList,
  preloadLibraryPath,
  readable,
  unreadableByOthers,
} from '../exec/environment.js';
import { DEFAULT_SOCKET } from './daemon-cmds.js';
import { UsageError } from './errors.js';

interface ExecOpts {
  aid: string;
  config?: string;
  socket?: string;
  timeout: string;
  debug?: boolean;
}

/** How long `vpm exec` waits for the daemon's `hello`. */
const HELLO_TIMEOUT_MS = 5000;

export function registerExec(program: Command): void {
  // `vpm exec --aid a python3 -m http.server 9000`: everything after the command
  // is the command's, even what looks like one of vpm's options (-c, -s). That
  // takes pass-through options here and positional options on the program (its
  // own options, --version and --help, then only count before the subcommand).
  program.enablePositionalOptions();
  program
    .command('exec')
    .description(
      'run a program in the virtual layer: it binds its usual port, vpm gives it a real one from the pool',
    )
    .usage('--aid AID [-c FILE | -s SOCKET] [--] command [args...]')
    .requiredOption('--aid <aid>', 'application id (AID) the program belongs to')
    .option('-c, --config <file>', 'take the control socket path from this config file')
    .option('-s, --socket <path>', `control socket of the daemon (default ${DEFAULT_SOCKET})`)
    .option(
      '--timeout <ms>',
      "how long the library waits for the daemon, on top of the pool's wait",
      String(DEFAULT_TIMEOUT_MS),
    )
    .option('--debug', 'the library traces each bind, connect and close on stderr (VPM_DEBUG=1)')
    .argument('<command>', 'the program to run')
    .argument('[args...]', 'its arguments')
    .passThroughOptions()
    .action(async (command: string, args: string[], o: ExecOpts) => {
      if (o.aid.length === 0) throw new UsageError('--aid: the AID must not be empty');
      if (o.config !== undefined && o.socket !== undefined)
        throw new UsageError('give either -c/--config or -s/--socket, not both');
      const timeoutMs = Number(o.timeout);
      if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000)
        throw new UsageError(`--timeout: "${o.timeout}" is not a number of ms in 1-600000`);
      const socket = resolve(
        o.socket ?? (o.config !== undefined ? loadConfig(o.config).control.socket : DEFAULT_SOCKET),
      );
      const hello = parseHello(
        o.aid,
        socket,
        await controlRequest(socket, 'hello', { aid: o.aid, pid: process.pid }, HELLO_TIMEOUT_MS),
      );
      if (hello.noPool) {
        process.stderr.write(
          `vpm: note: the daemon at ${socket} has no port pool (pool.range): binds of ${portsList(hello.ports) || 'multiplexed ports'} will be refused; connects are reported as AID ${o.aid}\n`,
        );
      }
      const lib = preloadLibraryPath();
      if (!readable(lib)) {
        throw new ExecError(
          'ERR_PRELOAD_MISSING',
          `the interception library ${lib} is not readable by this user (uid ${process.getuid?.()}): install vpm where every allowed user can read it (docs/security.md)`,
        );
      }
      // A program that drops to another user (setpriv, runuser, its own setuid)
      // loads the library after the exec, as that user.
      const why = unreadableByOthers(lib);
      if (why !== null && process.getuid?.() === 0)
        process.stderr.write(
          `vpm: note: ${why}: a program that runs as another user will run without vpm's library (install vpm where every allowed user can read it)\n`,
        );
      const env = execEnvironment(process.env, {
        socket,
        hello,
        lib,
        timeoutMs,
        debug: o.debug === true,
      });
      endLikeChild(await runChild(command, args, env));
    });
}
