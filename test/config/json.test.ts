import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { JsonSyntaxError, lineColumn, MAX_DEPTH, parseJson } from '../../src/config/json.js';

function syntaxError(text: string): JsonSyntaxError {
  try {
    parseJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) return e;
    throw e;
  }
  throw new Error(`parsed: ${text}`);
}

describe('parseJson', () => {
  it('agrees with JSON.parse on every JSON text (property, fast-check)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.constantFrom(undefined, 2, '\t'), (v, indent) => {
        const text = JSON.stringify(v, null, indent);
        expect(parseJson(text).value).toEqual(JSON.parse(text));
      }),
      { numRuns: 2000 },
    );
  });

  it('accepts what JSON.parse accepts and rejects what it rejects (random strings)', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: fc.constantFrom(...'{}[]":,0123-.eE tfnrulasx\\\n'.split('')) }),
        (s) => {
          let ours: unknown;
          let theirs: unknown;
          let oursOk = true;
          let theirsOk = true;
          try {
            ours = parseJson(s).value;
          } catch (e) {
            expect(e).toBeInstanceOf(JsonSyntaxError);
            oursOk = false;
          }
          try {
            theirs = JSON.parse(s);
          } catch {
            theirsOk = false;
          }
          // Duplicate keys are legal JSON; JSON.parse keeps the last, and so do we.
          expect(oursOk).toBe(theirsOk);
          if (oursOk) expect(ours).toEqual(theirs);
        },
      ),
      { numRuns: 5000 },
    );
  });

  it('gives line and column of a syntax error and names the usual mistakes', () => {
    let e = syntaxError('{\n  "a": 1,\n}');
    expect([e.line, e.column, e.message]).toEqual([
      3,
      1,
      'trailing comma before } is not allowed in JSON',
    ]);
    e = syntaxError('{\n  "a": 1\n  "b": 2\n}');
    expect([e.line, e.column]).toEqual([3, 3]);
    expect(e.message).toBe(
      `unexpected character '"', expected ',' or '}' after the property value`,
    );
    e = syntaxError('[1, 2,]');
    expect(e.message).toBe('trailing comma before ] is not allowed in JSON');
    expect(syntaxError('{ // note\n}').message).toMatch(/^comments are not allowed in JSON/);
    expect(syntaxError("{'a': 1}").message).toMatch(/^single quotes are not allowed/);
    expect(syntaxError('').message).toBe('the file is empty, expected a JSON value');
    expect(syntaxError('{"a": ').message).toBe('unexpected end of file, expected a JSON value');
    expect(syntaxError('{"a": 01}').message).toMatch(/malformed number/);
    expect(syntaxError('{"a": 1e999}').message).toBe('number 1e999 is out of range');
    expect(syntaxError('"abc').message).toBe('unterminated string');
    expect(syntaxError('"a\tb"').message).toMatch(/control character/);
    expect(syntaxError('{} x').message).toBe(
      "unexpected character 'x' after the end of the JSON value",
    );
  });

  it('records duplicate keys with their path and position', () => {
    const r = parseJson('{"s": [{"port": 1,\n "port": 2}]}');
    expect(r.value).toEqual({ s: [{ port: 2 }] });
    expect(r.duplicates).toEqual([{ path: ['s', 0, 'port'], line: 2, column: 2 }]);
  });

  it('keeps "__proto__" as a plain member', () => {
    const r = parseJson('{"__proto__": {"polluted": true}}').value as Record<string, unknown>;
    expect(Object.getPrototypeOf(r)).toBe(Object.prototype);
    expect(Object.keys(r)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('skips a byte order mark and limits nesting', () => {
    expect(parseJson('\ufeff{"a": 1}').value).toEqual({ a: 1 });
    expect(parseJson(`${'['.repeat(MAX_DEPTH)}${']'.repeat(MAX_DEPTH)}`).value).toBeDefined();
    expect(syntaxError(`${'['.repeat(100_000)}`).message).toMatch(/nesting deeper than/);
  });

  it('lineColumn counts from 1', () => {
    expect(lineColumn('ab\ncd', 0)).toEqual({ line: 1, column: 1 });
    expect(lineColumn('ab\ncd', 4)).toEqual({ line: 2, column: 2 });
  });
});
