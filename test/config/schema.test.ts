/**
 * The config schema has one source, src/config/schema.ts: the published file
 * docs/config.schema.json is that object written out, and the raw config type
 * the semantic checks read is derived from it.
 */

import { readFileSync } from 'node:fs';
import type { JSONSchema } from 'json-schema-to-ts';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { configValidator } from '../../src/config/load.js';
import {
  configSchema,
  configSchemaPath,
  configSchemaText,
  type RawConfig,
} from '../../src/config/schema.js';
import { compileSchema, formatPath } from '../../src/config/validator.js';

interface Found {
  pointer: string;
  schema: Record<string, unknown>;
}

/** Every subschema of `s` that has a default, with its JSON pointer. */
function withDefaults(s: unknown, pointer = ''): Found[] {
  if (typeof s !== 'object' || s === null || Array.isArray(s)) return [];
  const schema = s as Record<string, unknown>;
  const out: Found[] = 'default' in schema ? [{ pointer, schema }] : [];
  for (const [k, v] of Object.entries(schema)) {
    if (k === 'properties' || k === '$defs') {
      // Maps of names to schemas (a property may be called "default").
      for (const [name, sub] of Object.entries(v as object))
        out.push(...withDefaults(sub, `${pointer}/${k}/${name}`));
    } else if (k === 'oneOf' || k === 'anyOf') {
      (v as unknown[]).forEach((sub, i) => {
        out.push(...withDefaults(sub, `${pointer}/${k}/${i}`));
      });
    } else if (k === 'items' || k === 'additionalProperties') {
      out.push(...withDefaults(v, `${pointer}/${k}`));
    }
  }
  return out;
}

/** The defaults in `root` that their own subschemas reject, as `POINTER: PATH: MESSAGE`. */
function badDefaults(root: { $defs?: unknown }): string[] {
  return withDefaults(root).flatMap(({ pointer, schema }) => {
    // The subschema alone, as a root (where ajv would ignore a default), with the
    // definitions its $refs point to.
    const { default: value, ...rest } = schema;
    const r = compileSchema({ ...rest, $defs: root.$defs } as JSONSchema).validate(value);
    return r.ok ? [] : r.problems.map((p) => `${pointer}: ${formatPath(p.path)}: ${p.message}`);
  });
}

describe('docs/config.schema.json', () => {
  it('is src/config/schema.ts written out (node dist/scripts/emit-config-schema.js)', () => {
    const published = readFileSync(configSchemaPath(), 'utf8');
    expect(JSON.parse(published)).toEqual(configSchema);
    expect(published).toBe(configSchemaText());
  });
});

describe('the config schema', () => {
  it('compiles in strict mode', () => {
    expect(() => configValidator()).not.toThrow();
  });

  it('has only defaults that its own subschemas accept', () => {
    expect(withDefaults(configSchema).length).toBeGreaterThan(30);
    expect(badDefaults(configSchema)).toEqual([]);
    // ajv does not check defaults itself; this test would see one.
    const broken = {
      type: 'object',
      properties: { n: { $ref: '#/$defs/small', default: 9 } },
      $defs: { small: { type: 'integer', maximum: 5 } },
    };
    expect(badDefaults(broken)).toEqual(['/properties/n: (root): 9 is above the maximum 5']);
  });

  it('gives the raw type: defaulted fields present, others optional, forms as unions', () => {
    expectTypeOf<RawConfig['tun']['mtu']>().toEqualTypeOf<number>();
    expectTypeOf<RawConfig['services'][number]['protocol']>().toEqualTypeOf<'tcp' | 'udp'>();
    expectTypeOf<RawConfig['services'][number]['peer']>().toEqualTypeOf<string | undefined>();
    expectTypeOf<RawConfig['default']>().toEqualTypeOf<{ aid: string } | { refuse: true }>();
    expectTypeOf<RawConfig['pool']>().toEqualTypeOf<{
      range: string;
      quarantineMs: number;
      waitTimeoutMs: number;
    } | null>();
    expectTypeOf<RawConfig['metrics']['listen']>().toEqualTypeOf<string | null>();
  });
});
