import { describe, expect, it } from 'vitest';
import {
  compileSchema,
  formatPath,
  type SchemaProblem,
  showValue,
} from '../../src/config/schema-validate.js';

function problems(schema: unknown, value: unknown): string[] {
  return compileSchema(schema)
    .validate(value)
    .problems.map((p: SchemaProblem) => `${formatPath(p.path)}: ${p.message}`);
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
  it('refuses a schema keyword it does not implement (it would be silently ignored)', () => {
    expect(() => compileSchema({ type: 'string', format: 'ipv4' })).toThrow(/"format"/);
    expect(() =>
      compileSchema({ type: 'object', properties: { a: { exclusiveMinimum: 0 } } }),
    ).toThrow(/#\/properties\/a uses "exclusiveMinimum"/);
  });

  it('refuses a default that its own subschema rejects', () => {
    expect(() =>
      compileSchema({
        type: 'object',
        properties: { n: { type: 'integer', maximum: 5, default: 9 } },
      }),
    ).toThrow(/default 9 is invalid: 9 is above the maximum 5/);
  });

  it('refuses an unresolvable $ref and an unknown type', () => {
    expect(() => compileSchema({ $ref: '#/$defs/nope' })).toThrow(/cannot resolve/);
    expect(() => compileSchema({ type: 'float' })).toThrow(/unknown type "float"/);
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

  it('collects every problem, nested in arrays and objects', () => {
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
    const r = compileSchema(s).validate(input);
    expect(r.problems).toEqual([]);
    expect(r.value).toEqual({ a: { x: 1, y: [] }, b: 'k' });
    expect(input).toEqual({ b: 'k' });
    // Each default is a fresh copy.
    const r2 = compileSchema(s).validate({});
    expect((r2.value as { a: { y: unknown } }).a.y).not.toBe(
      (r.value as { a: { y: unknown } }).a.y,
    );
  });

  it('resolves local $refs, keeping the sibling description and default', () => {
    const s = {
      type: 'object',
      properties: { p: { $ref: '#/$defs/port', default: 80 } },
      $defs: { port: { type: 'integer', minimum: 1, maximum: 65535 } },
    };
    expect(problems(s, { p: 0 })).toEqual(['p: 0 is below the minimum 1']);
    expect(compileSchema(s).validate({}).value).toEqual({ p: 80 });
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
  });

  it('treats "__proto__" as an ordinary (unknown) key', () => {
    const value = JSON.parse('{"__proto__": {"x": 1}}');
    const s = { type: 'object', additionalProperties: false, properties: {} };
    expect(problems(s, value)).toEqual(['__proto__: unknown field (allowed here: )']);
    const open = compileSchema({ type: 'object', properties: {} }).validate(value);
    expect(Object.getPrototypeOf(open.value)).toBe(Object.prototype);
    expect(Object.keys(open.value as object)).toEqual(['__proto__']);
  });
});
