/**
 * Loading the configuration (the seed's "configurator", FIG. 9): one JSON file
 * that says which virtual services exist, which applications (AIDs) serve them
 * through which real ports, and which selectors send a new connection to which
 * AID.
 *
 * Theory of operation: the file goes through four steps, once, at start-up.
 *  1. parse: strict JSON with line and column on error (json.ts);
 *  2. structure: the schema (schema.ts, published as docs/config.schema.json),
 *     checked by ajv (validator.ts), which also fills in the schema's defaults;
 *  3. meaning: what a schema cannot say (semantic.ts);
 *  4. resolution: one deeply frozen `Config` (types.ts) with numeric forms ready
 *     for the data plane.
 * Every step collects all of its problems before failing, so one run names every
 * mistake; step 3 runs only when the structure is right, because its checks rely
 * on it. Failures are `ConfigError`s (errors.ts, exit code 2) that name the file,
 * the field and the bad value. Nothing here trusts the file: it may come from
 * anyone who can write it, and it decides where connections go.
 */

import { readFileSync } from 'node:fs';
import { ConfigError, type ConfigProblem } from './errors.js';
import { JsonSyntaxError, parseJson } from './json.js';
import { configSchema, type RawConfig } from './schema.js';
import { resolveConfig } from './semantic.js';
import type { Config } from './types.js';
import { type CompiledSchema, compileSchema, formatPath, type SchemaProblem } from './validator.js';

let validator: CompiledSchema<RawConfig> | null = null;

/** The schema as a validator, compiled on first use. */
export function configValidator(): CompiledSchema<RawConfig> {
  if (validator === null) {
    // Not `validator = compileSchema(...)`: inferring the schema's type back from
    // the declared result type is too deep for the type checker.
    const compiled = compileSchema(configSchema);
    validator = compiled;
  }
  return validator;
}

/** Reads, validates and resolves a config file. Throws ConfigError. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'EISDIR' ? 'it is a directory' : err.message;
    throw new ConfigError(
      'ERR_CONFIG_READ',
      file,
      [{ path: '', message: `cannot read the config file: ${why}` }],
      { cause: e },
    );
  }
  return parseConfigText(text, file);
}

/** Parses JSON text, then validates and resolves it. `file` names it in messages. */
export function parseConfigText(text: string, file: string): Config {
  let parsed: ReturnType<typeof parseJson>;
  try {
    parsed = parseJson(text);
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    throw new ConfigError(
      'ERR_CONFIG_PARSE',
      file,
      [{ path: '', message: `invalid JSON: ${e.message}`, line: e.line, column: e.column }],
      { cause: e },
    );
  }
  const duplicates: ConfigProblem[] = parsed.duplicates.map((d) => ({
    path: formatPath(d.path),
    message: `duplicate key at line ${d.line}, column ${d.column} (JSON would silently keep only the last one)`,
    line: d.line,
    column: d.column,
  }));
  return resolveChecked(parsed.value, file, duplicates);
}

/** Validates and resolves an already parsed value. `file` names it in messages. */
export function parseConfig(obj: unknown, file: string): Config {
  return resolveChecked(obj, file, []);
}

function resolveChecked(obj: unknown, file: string, earlier: ConfigProblem[]): Config {
  const result = configValidator().validate(obj);
  const problems = [...earlier, ...result.problems.map(fromSchemaProblem)];
  if (!result.ok || problems.length > 0)
    throw new ConfigError('ERR_CONFIG_INVALID', file, problems);
  const resolved = resolveConfig(result.value, file, obj);
  if (resolved.problems.length > 0)
    throw new ConfigError('ERR_CONFIG_INVALID', file, resolved.problems);
  return deepFreeze(resolved.config);
}

function fromSchemaProblem(p: SchemaProblem): ConfigProblem {
  const path = formatPath(p.path);
  return p.value === undefined
    ? { path, message: p.message }
    : { path, value: p.value, message: p.message };
}

function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}
