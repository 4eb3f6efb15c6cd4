/**
 * The `vpm` command line. Each subcommand lives in its own module and registers
 * itself here; this module only wires them to commander and maps errors to exit
 * codes (2 for bad input, 1 for everything else). Importing it runs nothing: the
 * executable is main.ts.
 */

import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { packageRoot } from '../base/paths.js';
import { registerCheckConfig } from './check-config.js';
import { registerDaemonCommands, registerDemo } from './daemon-cmds.js';
import { registerDecode } from './decode.js';
import { registerDump } from './dump.js';
import { registerExec } from './exec.js';

function version(): string {
  try {
    return JSON.parse(readFileSync(`${packageRoot()}/package.json`, 'utf8')).version as string;
  } catch {
    return 'unknown';
  }
}

function buildProgram(): Command {
  const program = new Command();
  program
    .name('vpm')
    .description('Virtual port multiplexer: many applications, one port number')
    .version(version())
    .showHelpAfterError()
    .exitOverride();
  registerDecode(program);
  registerCheckConfig(program);
  registerDaemonCommands(program);
  registerDemo(program);
  registerExec(program);
  registerDump(program);
  return program;
}

/** Run the CLI on `argv` (process.argv form); resolves to the exit code. */
export async function runCli(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return process.exitCode === undefined ? 0 : Number(process.exitCode);
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version exit 0; usage errors exit 2 (commander printed the message).
      return err.exitCode === 0 ? 0 : 2;
    }
    const e = err as Error & { exitCode?: number };
    process.stderr.write(`vpm: ${e.message}\n`);
    return e.exitCode ?? 1;
  }
}
