import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, isErrorCode, VpmError } from '../../src/base/errors.js';
import { packageRoot } from '../../src/base/paths.js';

const ROOT = packageRoot();
const DOC = readFileSync(join(ROOT, 'docs', 'errors.md'), 'utf8');

/**
 * Node's own codes, which vpm's sources mention but do not define: the addon's
 * argument checks throw them as Node's functions do (src/base/errors.ts).
 */
const NODE_CODES = new Set(['ERR_INVALID_ARG_TYPE', 'ERR_OUT_OF_RANGE']);

/** A code, or a pattern such as `ERR_PEER_*`, wherever it stands in a text. */
const CODE_IN_TEXT = /\bERR_[A-Z0-9_]*[A-Z0-9*]/g;

/**
 * The codes in the first column of the "Error codes" table of docs/errors.md. A
 * cell may list several (`` `ERR_TUN_OPEN`, `ERR_TUN_LINK` ``); a pattern is
 * kept as written, so that the test can refuse it.
 */
function documentedCodes(markdown: string): string[] {
  const section = markdown.split(/^## /m).find((s) => s.startsWith('Error codes'));
  if (section === undefined) throw new Error('docs/errors.md has no "## Error codes" section');
  const codes: string[] = [];
  for (const line of section.split('\n')) {
    const cells = line.split('|');
    // | code | where | meaning | what to do |  →  ['', ' code ', ...]
    if (cells.length < 3 || cells[0]!.trim() !== '') continue;
    codes.push(...(cells[1]!.match(CODE_IN_TEXT) ?? []));
  }
  return codes;
}

/** Every file under `dir` whose name ends in one of `exts`. */
function sources(dir: string, exts: readonly string[]): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => exts.some((e) => f.endsWith(e)))
    .map((f) => join(ROOT, dir, f));
}

const SELF = join(ROOT, 'src', 'base', 'errors.ts');

/** The quoted `'ERR_...'` / `"ERR_..."` string literals of vpm's sources, with where each is. */
function codesInSources(): Map<string, string> {
  const files = [
    ...sources('src', ['.ts']),
    ...sources('scripts', ['.ts']),
    ...sources(join('native', 'src'), ['.c', '.h']),
  ];
  const found = new Map<string, string>();
  for (const file of files) {
    if (file === SELF) continue; // the union itself
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/['"`](ERR_[A-Z0-9_]*[A-Z0-9])['"`]/g)) {
      const line = text.slice(0, m.index).split('\n').length;
      if (!found.has(m[1]!)) found.set(m[1]!, `${relative(ROOT, file)}:${line}`);
    }
  }
  return found;
}

describe('ERROR_CODES and docs/errors.md', () => {
  it('parses several codes in one cell and keeps patterns as written', () => {
    const md = [
      '## Error codes',
      '',
      '| code | where |',
      '| --- | --- |',
      '| `ERR_A` | x |',
      '| `ERR_B_1`, `ERR_B_2` | y, see `ERR_NOT_A_CODE_CELL` |',
      '| `ERR_C_*` | z |',
      '',
      '## Drop reasons',
      '| `ERR_ELSEWHERE` | w |',
    ].join('\n');
    expect(documentedCodes(md)).toEqual(['ERR_A', 'ERR_B_1', 'ERR_B_2', 'ERR_C_*']);
  });

  it('lists no code twice', () => {
    expect(ERROR_CODES.filter((c, i) => ERROR_CODES.indexOf(c) !== i)).toEqual([]);
  });

  it('documents every code of the union in the table of docs/errors.md', () => {
    const documented = new Set(documentedCodes(DOC));
    expect(ERROR_CODES.filter((c) => !documented.has(c))).toEqual([]);
  });

  it('lists in the table only codes of the union, each once, and no patterns', () => {
    const listed = documentedCodes(DOC);
    expect(listed.filter((c) => !isErrorCode(c))).toEqual([]);
    expect(listed.filter((c, i) => listed.indexOf(c) !== i)).toEqual([]);
  });

  it('mentions elsewhere in docs/errors.md only codes of the union, or patterns that match some', () => {
    const stale = [...new Set(DOC.match(CODE_IN_TEXT) ?? [])].filter((c) =>
      c.endsWith('*') ? !ERROR_CODES.some((k) => k.startsWith(c.slice(0, -1))) : !isErrorCode(c),
    );
    expect(stale).toEqual([]);
  });

  it("has every code quoted in src/, scripts/ and native/src/ (except Node's own)", () => {
    const unlisted = [...codesInSources()]
      .filter(([code]) => !NODE_CODES.has(code) && !isErrorCode(code))
      .map(([code, where]) => `${code} (${where})`);
    expect(unlisted).toEqual([]);
  });

  it('has no code that no source quotes any more', () => {
    const used = codesInSources();
    expect(ERROR_CODES.filter((c) => !used.has(c))).toEqual([]);
  });
});

describe('VpmError', () => {
  class ExampleError extends VpmError<'ERR_USAGE' | 'ERR_INTERNAL'> {
    readonly extra = 7;
  }

  it("takes its subclass's name, its code, its message and an optional cause", () => {
    const cause = new Error('underneath');
    const e = new ExampleError('ERR_USAGE', 'bad value "x"', { cause });
    expect(e).toBeInstanceOf(ExampleError);
    expect(e).toBeInstanceOf(VpmError);
    expect(e).toBeInstanceOf(Error);
    expect(e).toMatchObject({ name: 'ExampleError', code: 'ERR_USAGE', message: 'bad value "x"' });
    expect(e.cause).toBe(cause);
    expect(e.extra).toBe(7);
    expect(String(e)).toBe('ExampleError: bad value "x"');
    expect(new ExampleError('ERR_INTERNAL', 'm').cause).toBeUndefined();
  });

  it('accepts only codes of its subset (a type check)', () => {
    // @ts-expect-error ERR_TUN_IO is in the union but not in ExampleError's subset
    new ExampleError('ERR_TUN_IO', 'x');
    // @ts-expect-error ERR_NOT_A_CODE is in no union at all
    class Bad extends VpmError<'ERR_NOT_A_CODE'> {}
    expect(Bad).toBeDefined();
  });

  it('recognises its codes among strings', () => {
    expect(isErrorCode('ERR_TUN_IO')).toBe(true);
    expect(isErrorCode('ERR_INVALID_ARG_TYPE')).toBe(false);
    expect(isErrorCode('ENOENT')).toBe(false);
    expect(isErrorCode(undefined)).toBe(false);
  });
});

describe('the drop reasons and docs/errors.md', () => {
  it('documents every drop reason, in the order of their numbers, and no other', async () => {
    const { DROP_NAMES } = await import('../../src/datapath/counters.js');
    const section = DOC.split(/^## /m).find((s) => s.startsWith('Drop reasons'));
    expect(section, 'a "## Drop reasons" section').toBeDefined();
    const documented = section!
      .split('\n')
      .map((l) => /^\| `([a-z0-9_]+)` \|/.exec(l)?.[1])
      .filter((r): r is string => r !== undefined);
    expect(documented).toEqual(DROP_NAMES.slice(1));
  });
});
