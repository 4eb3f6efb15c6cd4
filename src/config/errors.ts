/**
 * The config's errors. One class, `ConfigError` (exit code 2), with a stable
 * `code` and every problem found, each naming the field path and the bad value;
 * its message is one line per problem, `FILE: PATH: MESSAGE`.
 */

import { VpmError } from '../base/errors.js';

export type ConfigErrorCode = 'ERR_CONFIG_READ' | 'ERR_CONFIG_PARSE' | 'ERR_CONFIG_INVALID';

export interface ConfigProblem {
  /** Field path such as `services[0].port`; `(root)` for the whole document. */
  readonly path: string;
  /** The bad value; absent for a missing field or a file-level problem. */
  readonly value?: unknown;
  /** What is wrong, naming the value and what was expected. */
  readonly message: string;
  /** Position in the file, where known (syntax errors, duplicate keys). */
  readonly line?: number;
  readonly column?: number;
}

/** How many problems the message lists; `problems` always has all of them. */
const MAX_LISTED = 50;

export class ConfigError extends VpmError<ConfigErrorCode> {
  readonly exitCode = 2;
  constructor(
    code: ConfigErrorCode,
    /** The config file, as given. */
    readonly file: string,
    readonly problems: readonly ConfigProblem[],
    options?: ErrorOptions,
  ) {
    super(code, ConfigError.format(file, problems), options);
  }

  /** One line per problem: `file: path: message`, or `file:line:column: message`. */
  static format(file: string, problems: readonly ConfigProblem[]): string {
    const lines = problems.slice(0, MAX_LISTED).map((p) => {
      if (p.path === '' && p.line !== undefined)
        return `${file}:${p.line}:${p.column}: ${p.message}`;
      return p.path === '' ? `${file}: ${p.message}` : `${file}: ${p.path}: ${p.message}`;
    });
    if (problems.length > MAX_LISTED)
      lines.push(`${file}: ... and ${problems.length - MAX_LISTED} more problems`);
    return lines.join('\n');
  }
}
