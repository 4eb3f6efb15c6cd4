/**
 * The validator (src/config/validator.ts): ajv with strict schemas, and the
 * formatter that turns ajv's errors into messages naming the path, the bad value
 * and what was expected, in the order of the document.
 */

import type { JSONSchema } from 'json-schema-to-ts';
import { describe, expect, it } from 'vitest';
import { compileSchema, formatPath, showValue } from '../../src/config/validator.js';

/** `compileSchema` wants a JSON Schema type; the schemas here are small literals. */
const compile = (schema: object) => compileSchema(schema as JSONSchema);

function problems(schema: object, value: unknown): string[] {
  const r = compile(schema).validate(value);
  return r.ok ? [] : r.problems.map((p) => `${formatPath(p.path)}: ${p.message}`);
}

describe('formatPath', () => {
  it('writes JavaScript-like paths', () => {
    expect(formatPath([])).toBe('(root)');
    expect(formatPath(['services', 0, 'port'])).toBe('services[0].port');
    expect(formatPath(['a', 'b c', 2])).toBe('a["b c"][2]');
    expect(formatPath(['$schema'])).toBe('$schema');
  });
});

describe('showValue', () => {
  it('renders any value briefly and safely', () => {
    expect(showValue('x')).toBe('"x"');
    expect(showValue(-0)).toBe('-0');
    expect(showValue({ a: [1, { b: { c: { d: 1 } } }] })).toBe('{"a": [1, {"b": {...}}]}');
    expect(showValue('y'.repeat(100)).length).toBe(60);
    expect(showValue(undefined)).toBe('undefined');
  });
});

describe('compileSchema', () => {
  it('refuses a keyword or format ajv does not know (it would be silently ignored)', () => {
    expect(() => compile({ type: 'string', colour: 'red' })).toThrow(/unknown keyword: "colour"/);
    expect(() => compile({ type: 'string', format: 'ipv4' })).toThrow(/unknown format "ipv4"/);
  });

  it('refuses an unresolvable $ref and an unknown type', () => {
    expect(() => compile({ $ref: '#/$defs/nope' })).toThrow(
      /can't resolve reference #\/\$defs\/nope/,
    );
    expect(() => compile({ type: 'float' })).toThrow(/schema is invalid/);
  });

  it('refuses what its messages could not explain: oneOf beside $ref, oneOf in a oneOf', () => {
    expect(() =>
      compile({ $defs: { a: { type: 'string' } }, $ref: '#/$defs/a', oneOf: [{ minLength: 1 }] }),
    ).toThrow(/# combines oneOf\/anyOf with \$ref or allOf/);
    expect(() =>
      compile({ oneOf: [{ anyOf: [{ type: 'string' }, { type: 'null' }] }, { type: 'integer' }] }),
    ).toThrow(/#\/oneOf\/0 nests a oneOf\/anyOf/);
  });

  it('compiles a schema once', () => {
    const s = { type: 'integer' };
    expect(compile(s)).toBe(compile(s));
  });
});

describe('validate', () => {
  it('checks types, with integer distinct from number', () => {
    expect(problems({ type: 'integer' }, 1.5)).toEqual(['(root): 1.5 is not an integer']);
    expect(problems({ type: 'integer' }, 2.0)).toEqual([]);
    expect(problems({ type: 'integer' }, '2')).toEqual([
      '(root): "2" is a string, expected an integer',
    ]);
    expect(problems({ type: ['string', 'null'] }, null)).toEqual([]);
    expect(problems({ type: ['string', 'null'] }, [])).toEqual([
      '(root): [] is an array, expected a string or null',
    ]);
    expect(problems({ type: 'object' }, [])).toEqual([
      '(root): [] is an array, expected an object',
    ]);
    expect(problems({ type: 'number' }, Number.NaN)).toHaveLength(1);
  });

  it('gives a value of the wrong type, or not in its enum, that one problem', () => {
    expect(problems({ type: 'string', enum: ['a', 'b'], minLength: 2 }, 3)).toEqual([
      '(root): 3 is an integer, expected a string',
    ]);
    expect(
      problems({ type: 'object', required: ['x'], properties: { x: { type: 'string' } } }, 'o'),
    ).toEqual(['(root): "o" is a string, expected an object']);
  });

  it('checks numbers, strings and arrays against their bounds', () => {
    const s = {
      type: 'object',
      properties: {
        n: { type: 'integer', minimum: 1, maximum: 10 },
        s: { type: 'string', minLength: 2, maxLength: 3 },
        a: { type: 'array', minItems: 1, maxItems: 2, uniqueItems: true },
      },
    };
    expect(problems(s, { n: 0, s: 'a', a: [] })).toEqual([
      'n: 0 is below the minimum 1',
      's: "a" is too short: 1 characters, expected at least 2',
      'a: [] has 0 items, expected at least 1',
    ]);
    expect(problems(s, { n: 11, s: 'abcd', a: [1, 2, 3] })).toEqual([
      'n: 11 is above the maximum 10',
      's: "abcd" is too long: 4 characters, expected at most 3',
      'a: the list has 3 items, expected at most 2',
    ]);
    expect(problems(s, { a: [{ x: 1 }, { x: 1 }] })).toEqual(['a[1]: {"x": 1} repeats a[0]']);
    // Lengths count code points, not UTF-16 units.
    expect(problems(s, { s: '😀😀' })).toEqual([]);
  });

  it('names every repeat in a list, not only the first (ajv stops there)', () => {
    const s = { type: 'array', uniqueItems: true, items: { type: 'integer', maximum: 5 } };
    expect(problems(s, [1, 2, 1, 9, 2, 1])).toEqual([
      '[2]: 1 repeats [0]',
      '[4]: 2 repeats [1]',
      '[5]: 1 repeats [0]',
      '[3]: 9 is above the maximum 5',
    ]);
  });

  it('checks enum, const and pattern (naming the title when there is one)', () => {
    expect(problems({ enum: ['tcp', 'udp'] }, 'sctp')).toEqual([
      '(root): "sctp" is not one of "tcp", "udp"',
    ]);
    expect(problems({ const: true }, false)).toEqual([
      '(root): false is not allowed here: the only allowed value is true',
    ]);
    expect(problems({ type: 'string', pattern: '^a+$' }, 'b')).toEqual([
      '(root): "b" does not match the pattern ^a+$',
    ]);
    expect(problems({ type: 'string', pattern: '^a+$', title: 'only a' }, 'b')).toEqual([
      '(root): "b" is not valid here: expected only a',
    ]);
  });

  it("falls back on ajv's own words for a keyword it has no message for", () => {
    expect(problems({ type: 'integer', multipleOf: 3 }, 4)).toEqual([
      '(root): 4 must be multiple of 3',
    ]);
  });

  it('reports missing and unknown fields at their own path, with a spelling hint', () => {
    const s = {
      type: 'object',
      additionalProperties: false,
      required: ['port'],
      properties: { port: { type: 'integer' }, address: { type: 'string' } },
    };
    expect(problems(s, { adress: 'x' })).toEqual([
      'port: required field is missing',
      'adress: unknown field; did you mean "address"?',
    ]);
    expect(problems(s, { port: 1, zzz: 1 })).toEqual([
      'zzz: unknown field (allowed here: port, address)',
    ]);
  });

  it('collects every problem, nested in arrays and objects, in the order of the document', () => {
    const s = {
      type: 'array',
      items: {
        type: 'object',
        properties: { p: { type: 'integer', maximum: 5 } },
      },
    };
    expect(problems(s, [{ p: 6 }, { p: 1 }, { p: 'x' }, 3])).toEqual([
      '[0].p: 6 is above the maximum 5',
      '[2].p: "x" is a string, expected an integer',
      '[3]: 3 is an integer, expected an object',
    ]);
    // ajv itself reports unknown fields before known ones, and by schema order.
    const o = {
      type: 'object',
      additionalProperties: false,
      properties: { a: { type: 'integer' }, b: { type: 'integer' } },
    };
    expect(problems(o, { b: 'x', zz: 1, a: 'y' })).toEqual([
      'b: "x" is a string, expected an integer',
      'zz: unknown field (allowed here: a, b)',
      'a: "y" is a string, expected an integer',
    ]);
  });

  it('fills in defaults, recursively, without touching the input', () => {
    const s = {
      type: 'object',
      properties: {
        a: {
          type: 'object',
          default: {},
          properties: { x: { type: 'integer', default: 1 }, y: { type: 'array', default: [] } },
        },
        b: { type: 'string' },
      },
    };
    const input = { b: 'k' };
    const r = compile(s).validate(input);
    expect(r.problems).toEqual([]);
    expect(r.ok && r.value).toEqual({ a: { x: 1, y: [] }, b: 'k' });
    expect(input).toEqual({ b: 'k' });
    // Each default is a fresh copy.
    const r2 = compile(s).validate({});
    expect(r2.ok && (r2.value as { a: { y: unknown } }).a.y).not.toBe(
      r.ok && (r.value as { a: { y: unknown } }).a.y,
    );
  });

  it('resolves local $refs, keeping the sibling description and default', () => {
    const s = {
      type: 'object',
      properties: { p: { $ref: '#/$defs/port', default: 80 } },
      $defs: { port: { type: 'integer', minimum: 1, maximum: 65535 } },
    };
    expect(problems(s, { p: 0 })).toEqual(['p: 0 is below the minimum 1']);
    const r = compile(s).validate({});
    expect(r.ok && r.value).toEqual({ p: 80 });
  });

  it('reports the closest oneOf branch, or the allowed forms when none is closest', () => {
    const s = {
      oneOf: [
        {
          title: 'A',
          type: 'object',
          additionalProperties: false,
          required: ['aid'],
          properties: { aid: { type: 'string' } },
        },
        {
          title: 'R',
          type: 'object',
          additionalProperties: false,
          required: ['refuse'],
          properties: { refuse: { const: true } },
        },
      ],
    };
    expect(problems(s, { aid: 'x' })).toEqual([]);
    expect(problems(s, { refuse: false })).toEqual([
      'refuse: false is not allowed here: the only allowed value is true',
    ]);
    expect(problems(s, { aid: 'x', refuse: true })).toEqual([
      '(root): {"aid": "x", "refuse": true} matches none of the allowed forms: A, R',
    ]);
    expect(problems({ oneOf: [{ type: 'integer' }, { type: 'number' }] }, 1)).toEqual([
      '(root): 1 is ambiguous: it matches more than one of form 1, form 2',
    ]);
    expect(problems({ anyOf: [{ type: 'integer' }, { type: 'number' }] }, 1)).toEqual([]);
    expect(problems({ anyOf: [{ type: 'integer' }, { type: 'null' }] }, 'x')).toEqual([
      '(root): "x" matches none of the allowed forms: form 1, form 2',
    ]);
  });

  it('explains a oneOf deep in the document and leaves its neighbours alone', () => {
    const branch = (k: string) => ({
      type: 'object',
      additionalProperties: false,
      required: [k],
      properties: { [k]: { type: 'integer', maximum: 9 } },
    });
    const s = {
      type: 'object',
      properties: {
        list: { type: 'array', items: { oneOf: [branch('a'), branch('b')] } },
        n: { type: 'integer' },
      },
    };
    expect(problems(s, { n: 'x', list: [{ a: 1 }, { b: 10 }, {}] })).toEqual([
      'n: "x" is a string, expected an integer',
      'list[1].b: 10 is above the maximum 9',
      'list[2]: {} matches none of the allowed forms: form 1, form 2',
    ]);
  });

  it('treats "__proto__" as an ordinary (unknown) key', () => {
    const value = JSON.parse('{"__proto__": {"x": 1}}');
    const s = { type: 'object', additionalProperties: false, properties: {} };
    expect(problems(s, value)).toEqual(['__proto__: unknown field (allowed here: )']);
    const open = compile({ type: 'object', properties: {} }).validate(value);
    expect(open.ok).toBe(true);
    if (!open.ok) return;
    expect(Object.getPrototypeOf(open.value)).toBe(Object.prototype);
    expect(Object.keys(open.value as object)).toEqual(['__proto__']);
  });
});
