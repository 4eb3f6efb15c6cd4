/**
 * `vpm check-config FILE [--json]`: validate a config file the way the daemon
 * would at start-up, without starting anything. Prints "FILE: ok" and a summary
 * (or, with --json, the effective config with every default written out) and
 * exits 0; or prints every problem and exits 2.
 */

import type { Command } from 'commander';
import { ConfigError } from '../config/errors.js';
import { loadConfig } from '../config/load.js';
import { configToJson, configWarnings, summarizeConfig } from '../config/summary.js';
import type { Config } from '../config/types.js';

export function registerCheckConfig(program: Command): void {
  program
    .command('check-config')
    .description('validate a config file and summarize it (exit 0), or list its problems (exit 2)')
    .argument('<file>', 'the config file (JSON, see docs/configuration.md)')
    .option('--json', 'print the effective config (defaults filled in) or the problems as JSON')
    .action((file: string, opts: { json?: boolean }) => {
      let config: Config;
      try {
        config = loadConfig(file);
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        if (opts.json) {
          process.stdout.write(
            `${JSON.stringify({ ok: false, file, code: e.code, problems: e.problems }, null, 2)}\n`,
          );
        } else {
          process.stderr.write(`${e.message}\n`);
        }
        process.exitCode = e.exitCode;
        return;
      }
      const warnings = configWarnings(config);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(configToJson(config), null, 2)}\n`);
      } else {
        const lines = [`${file}: ok`, ...summarizeConfig(config)];
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      for (const w of warnings) process.stderr.write(`${file}: warning: ${w}\n`);
    });
}
