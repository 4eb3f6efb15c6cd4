/**
 * JSON Schema validation of vpm's untrusted inputs (the config file, schema.ts;
 * the control socket's requests, src/control/requests.ts) on ajv, with messages
 * for people.
 *
 * Theory of operation. One Ajv2020 instance (the schemas are draft 2020-12)
 * compiles every schema, with:
 *  - strict: a keyword, format or type combination ajv does not know is an error
 *    when the schema is compiled, never silently ignored (the schema would then
 *    promise more than vpm checks);
 *  - allErrors: one run finds every problem, so one `vpm check-config` names them all;
 *  - allowUnionTypes: `"type": ["object", "null"]`;
 *  - useDefaults: a missing property gets its schema default (a fresh copy,
 *    completed by its own subschema's defaults);
 *  - verbose: an error carries the subschema that failed (titles, enums, branches).
 * `validate(value)` runs on a copy of the value, because ajv fills in defaults in
 * place and the caller's value must stay as it was. On success it returns the
 * copy, typed from the schema (`FromSchema`). On failure it turns ajv's errors
 * into `SchemaProblem`s: the path as segments (`services[0].port`), the bad value
 * (from the caller's value) and a message naming it and what was expected. ajv
 * reports some things the way a machine wants them; the formatter evens that out:
 *  - ajv reports in keyword order (unknown fields before known ones, say); the
 *    problems are sorted into the order of the document;
 *  - a value of the wrong type gets that one problem (ajv also says that 3 is not
 *    one of the enum's strings), and so does a value not in an enum or const;
 *  - uniqueItems stops at the first repeat; every repeat is reported;
 *  - a failed oneOf/anyOf leaves the errors of all its branches mixed together:
 *    each branch is validated alone, and if one comes clearly closest (fewest
 *    problems) its problems are the useful ones; otherwise one problem lists the
 *    allowed forms by title.
 */

import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import type { FromSchema, JSONSchema } from 'json-schema-to-ts';

export type PathSegment = string | number;

/** One thing wrong with the value, found by the schema. */
export interface SchemaProblem {
  /** Where: property names and array indexes from the root. */
  readonly path: readonly PathSegment[];
  /** The bad value (undefined for a missing field). */
  readonly value: unknown;
  /** What is wrong, naming the value and what was expected. */
  readonly message: string;
}

export type ValidationResult<T> =
  /** `value`: a copy of the input with the schema's defaults filled in. */
  | { readonly ok: true; readonly value: T; readonly problems: readonly [] }
  | { readonly ok: false; readonly problems: readonly SchemaProblem[] };

export interface CompiledSchema<T> {
  validate(value: unknown): ValidationResult<T>;
}

/** `services[0].port`; `(root)` for the empty path; odd keys quoted: `a["b c"]`. */
export function formatPath(path: readonly PathSegment[]): string {
  if (path.length === 0) return '(root)';
  let s = '';
  for (const seg of path) {
    if (typeof seg === 'number') s += `[${seg}]`;
    else if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(seg)) s += s === '' ? seg : `.${seg}`;
    else s += `[${JSON.stringify(seg)}]`;
  }
  return s;
}

/** A short, safe rendering of any value for an error message (never throws). */
export function showValue(v: unknown, max = 60): string {
  const s = render(v, 3);
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

function render(v: unknown, depth: number): string {
  if (v === undefined) return 'undefined';
  if (v === null || typeof v === 'boolean') return String(v);
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v);
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'bigint') return `${v}n`;
  if (Array.isArray(v)) {
    if (depth === 0) return v.length === 0 ? '[]' : '[...]';
    return `[${v
      .slice(0, 8)
      .map((x) => render(x, depth - 1))
      .join(', ')}${v.length > 8 ? ', ...' : ''}]`;
  }
  if (typeof v === 'object') {
    const keys = Object.keys(v);
    if (depth === 0) return keys.length === 0 ? '{}' : '{...}';
    const parts = keys
      .slice(0, 8)
      .map((k) => `${JSON.stringify(k)}: ${render((v as Record<string, unknown>)[k], depth - 1)}`);
    return `{${parts.join(', ')}${keys.length > 8 ? ', ...' : ''}}`;
  }
  return typeof v;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** JSON equality (instance equality as JSON Schema defines it for uniqueItems). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k], b[k]));
  }
  return false;
}

/** A copy of arrays and plain objects (own keys, "__proto__" included as a plain key). */
function copy(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(copy);
  if (!isObject(v)) return v;
  const o: Record<string, unknown> = {};
  for (const k of Object.keys(v))
    Object.defineProperty(o, k, {
      value: copy(v[k]),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  return o;
}

// ---------------------------------------------------------------------------
// The one ajv set-up.

let ajvInstance: Ajv2020 | null = null;

function ajv(): Ajv2020 {
  ajvInstance ??= new Ajv2020({
    strict: true,
    allErrors: true,
    allowUnionTypes: true,
    useDefaults: true,
    verbose: true,
  });
  return ajvInstance;
}

const compiled = new WeakMap<object, CompiledSchema<unknown>>();
let anonymous = 0;

/**
 * Compiles a schema (once per schema object) into a validator whose result is
 * typed from the schema. Throws Error when the schema itself is wrong (ajv's
 * strict mode) or uses a combination the formatter cannot explain.
 */
export function compileSchema<S extends JSONSchema>(schema: S): CompiledSchema<FromSchema<S>>;
export function compileSchema(schema: JSONSchema): CompiledSchema<unknown> {
  if (!isObject(schema)) throw new Error('schema: the schema is not an object');
  let c = compiled.get(schema);
  if (c === undefined) {
    checkComposites(schema, '#');
    // Branches of a oneOf are re-validated by reference into the schema, which
    // needs an id: anonymous schemas (tests) get one.
    const id = typeof schema.$id === 'string' ? schema.$id : `urn:vpm:schema:${++anonymous}`;
    c = new Compiled(
      ajv().compile(id === schema.$id ? schema : { ...(schema as object), $id: id }),
      id,
    );
    compiled.set(schema, c);
  }
  return c;
}

/**
 * The formatter finds a oneOf's branch errors as the run of errors just before
 * it, below its value and from other subschemas than its own. A $ref or allOf
 * beside a oneOf/anyOf would add such errors too, and a oneOf inside a branch
 * would be re-validated against the wrong pointer, so a schema may do neither
 * (none of vpm's schemas needs to; a $ref to a definition with a oneOf, from
 * inside a branch, is not detected here).
 */
function checkComposites(s: unknown, where: string, inBranch = false): void {
  if (Array.isArray(s)) {
    s.forEach((x, i) => {
      checkComposites(x, `${where}/${i}`, inBranch);
    });
    return;
  }
  if (!isObject(s)) return;
  const composite = s.oneOf !== undefined || s.anyOf !== undefined;
  if (composite && (s.$ref !== undefined || s.allOf !== undefined))
    throw new Error(
      `schema: ${where} combines oneOf/anyOf with $ref or allOf, which the messages cannot explain`,
    );
  if (composite && inBranch)
    throw new Error(
      `schema: ${where} nests a oneOf/anyOf in another one's branch, which the messages cannot explain`,
    );
  for (const [k, v] of Object.entries(s)) {
    // const, enum, default and examples hold values, not schemas.
    if (k === 'const' || k === 'enum' || k === 'default' || k === 'examples') continue;
    checkComposites(v, `${where}/${k}`, inBranch || k === 'oneOf' || k === 'anyOf');
  }
}

class Compiled implements CompiledSchema<unknown> {
  private readonly branches = new Map<string, ValidateFunction>();

  constructor(
    private readonly fn: ValidateFunction,
    private readonly id: string,
  ) {}

  validate(value: unknown): ValidationResult<unknown> {
    const data = copy(value);
    if (this.fn(data)) return { ok: true, value: data, problems: [] };
    return { ok: false, problems: this.format(this.fn.errors ?? [], value) };
  }

  /** The validator of one subschema, by its JSON pointer in this schema (`#/oneOf/1`). */
  private branch(pointer: string): ValidateFunction {
    const ref = pointer.startsWith('#') ? `${this.id}${pointer}` : pointer;
    let fn = this.branches.get(ref);
    if (fn === undefined) {
      fn = ajv().getSchema(ref);
      if (fn === undefined) throw new Error(`schema: cannot resolve ${ref}`);
      this.branches.set(ref, fn);
    }
    return fn;
  }

  /** ajv's errors for `original` → problems in document order. */
  private format(errors: readonly ErrorObject[], original: unknown): SchemaProblem[] {
    const raw: Raw[] = [];
    for (const e of errors) {
      const node = nodePath(e.instancePath, original);
      if (e.keyword === 'oneOf' || e.keyword === 'anyOf') {
        // The errors of its branches came just before it: drop them.
        while (raw.length > 0) {
          const last = raw[raw.length - 1]!;
          if (last.schema === e.parentSchema || !startsWith(last.node, node)) break;
          raw.pop();
        }
        raw.push({ node, schema: e.parentSchema, entries: this.alternatives(e, node, original) });
      } else {
        raw.push({ node, schema: e.parentSchema, entries: phrase(e, node, original) });
      }
    }
    const entries = suppress(raw.flatMap((r) => r.entries));
    entries.sort((a, b) => compareEntries(a, b, original));
    return entries.map((x) => x.problem);
  }

  /** A failed oneOf/anyOf at `node`: the closest branch's problems, or the allowed forms. */
  private alternatives(e: ErrorObject, node: PathSegment[], original: unknown): Entry[] {
    const branches = (Array.isArray(e.schema) ? e.schema : []) as { title?: unknown }[];
    const value = valueAt(original, node, e.data);
    const results = branches.map((_, i) => {
      const fn = this.branch(`${e.schemaPath}/${i}`);
      if (fn(copy(value))) return [];
      return this.format(fn.errors ?? [], value).map((p) => ({ ...p, path: [...node, ...p.path] }));
    });
    const at = (message: string): Entry[] => [
      {
        problem: { path: node, value, message },
        at: node,
        rank: RANK.composite,
        kind: 'composite',
      },
    ];
    const forms = branches
      .map((b, i) => (typeof b.title === 'string' ? b.title : `form ${i + 1}`))
      .join(', ');
    const ok = results.filter((r) => r.length === 0).length;
    if (ok > 1) return at(`${showValue(value)} is ambiguous: it matches more than one of ${forms}`);
    if (ok === 1) return []; // cannot happen: ajv reported this oneOf as failed
    const fewest = Math.min(...results.map((r) => r.length));
    const closest = results.filter((r) => r.length === fewest);
    if (closest.length === 1)
      return closest[0]!.map((problem) => ({
        problem,
        at: node,
        rank: RANK.composite,
        kind: 'composite',
      }));
    return at(`${showValue(value)} matches none of the allowed forms: ${forms}`);
  }
}

// ---------------------------------------------------------------------------
// Turning one ajv error into problems.

/** A problem with what orders it: the node it belongs to (`at`) and a rank there. */
interface Entry {
  readonly problem: SchemaProblem;
  readonly at: readonly PathSegment[];
  readonly rank: number;
  readonly kind: string;
}

interface Raw {
  readonly node: PathSegment[];
  readonly schema: unknown;
  readonly entries: Entry[];
}

/**
 * The order of a node's own problems, as a person reads a field: its type, its
 * allowed values, its bounds, its pattern; then its children (CHILD) in the
 * order of the document; then what its oneOf/anyOf found.
 */
const RANK = {
  type: 0,
  enum: 1,
  const: 2,
  minimum: 3,
  maximum: 4,
  minLength: 5,
  maxLength: 6,
  pattern: 7,
  minItems: 8,
  maxItems: 9,
  uniqueItems: 10,
  required: 11,
  other: 12,
  child: 50,
  composite: 90,
} as const;

const TYPE_NOUNS: Record<string, string> = {
  null: 'null',
  boolean: 'a boolean',
  object: 'an object',
  array: 'an array',
  number: 'a number',
  integer: 'an integer',
  string: 'a string',
};

/** The JSON type of a value as a noun phrase: "a string", "an array", ... */
function typeNoun(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a number';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'boolean') return 'a boolean';
  return typeof v; // not JSON at all (undefined, a function, ...): only from callers in code
}

function phrase(e: ErrorObject, node: PathSegment[], original: unknown): Entry[] {
  const v = valueAt(original, node, e.data);
  const params = e.params as Record<string, unknown>;
  const parent = (isObject(e.parentSchema) ? e.parentSchema : {}) as Record<string, unknown>;
  const here = (kind: keyof typeof RANK, message: string): Entry[] => [
    { problem: { path: node, value: v, message }, at: node, rank: RANK[kind], kind },
  ];
  const shown = showValue(v);
  switch (e.keyword) {
    case 'type': {
      const types = ([] as unknown[]).concat(params.type).map(String);
      if (typeof v === 'number' && types.includes('integer') && Number.isFinite(v))
        return here('type', `${shown} is not an integer`);
      const expected = types.map((t) => TYPE_NOUNS[t] ?? t).join(' or ');
      return here('type', `${shown} is ${typeNoun(v)}, expected ${expected}`);
    }
    case 'enum': {
      const allowed = Array.isArray(e.schema) ? e.schema : [];
      return here('enum', `${shown} is not one of ${allowed.map((x) => showValue(x)).join(', ')}`);
    }
    case 'const':
      return here(
        'const',
        `${shown} is not allowed here: the only allowed value is ${showValue(params.allowedValue)}`,
      );
    case 'minimum':
      return here('minimum', `${shown} is below the minimum ${params.limit}`);
    case 'maximum':
      return here('maximum', `${shown} is above the maximum ${params.limit}`);
    case 'minLength':
      return here(
        'minLength',
        `${shown} is too short: ${[...String(v)].length} characters, expected at least ${params.limit}`,
      );
    case 'maxLength':
      return here(
        'maxLength',
        `${shown} is too long: ${[...String(v)].length} characters, expected at most ${params.limit}`,
      );
    case 'pattern':
      return here(
        'pattern',
        typeof parent.title === 'string'
          ? `${shown} is not valid here: expected ${parent.title}`
          : `${shown} does not match the pattern ${params.pattern}`,
      );
    case 'minItems':
      return here(
        'minItems',
        `${shown} has ${Array.isArray(v) ? v.length : '?'} items, expected at least ${params.limit}`,
      );
    case 'maxItems':
      return [
        {
          problem: {
            path: node,
            value: undefined,
            message: `the list has ${Array.isArray(v) ? v.length : '?'} items, expected at most ${params.limit}`,
          },
          at: node,
          rank: RANK.maxItems,
          kind: 'maxItems',
        },
      ];
    case 'uniqueItems': {
      // ajv stops at the first repeat; name every one, each at its own index.
      const list = Array.isArray(v) ? v : [];
      const out: Entry[] = [];
      for (let j = 1; j < list.length; j++) {
        const i = list.findIndex((x, k) => k < j && jsonEqual(x, list[j]));
        if (i < 0) continue;
        out.push({
          problem: {
            path: [...node, j],
            value: list[j],
            message: `${showValue(list[j])} repeats ${formatPath([...node, i])}`,
          },
          at: node,
          rank: RANK.uniqueItems,
          kind: 'uniqueItems',
        });
      }
      return out;
    }
    case 'required':
      return [
        {
          problem: {
            path: [...node, String(params.missingProperty)],
            value: undefined,
            message: 'required field is missing',
          },
          at: node,
          rank: RANK.required,
          kind: 'required',
        },
      ];
    case 'additionalProperties': {
      const key = String(params.additionalProperty);
      const known = Object.keys(isObject(parent.properties) ? parent.properties : {});
      const hint = closest(key, known);
      const path = [...node, key];
      return [
        {
          problem: {
            path,
            value: isObject(v) ? v[key] : undefined,
            message:
              hint !== null
                ? `unknown field; did you mean "${hint}"?`
                : `unknown field (allowed here: ${known.join(', ')})`,
          },
          at: path,
          rank: RANK.type,
          kind: 'unknown',
        },
      ];
    }
    default:
      // A keyword none of vpm's schemas uses yet: ajv's own words.
      return here('other', `${shown} ${e.message ?? `fails "${e.keyword}"`}`);
  }
}

/**
 * A value that fails its type, enum or const gets that one problem: nothing else
 * about it, or below it, makes sense then.
 */
function suppress(entries: Entry[]): Entry[] {
  // Per node, the first type problem, else the first enum, else the first const.
  const byNode = new Map<string, Entry>();
  for (const kind of ['type', 'enum', 'const']) {
    for (const x of entries) {
      const k = JSON.stringify(x.at);
      if (x.kind === kind && !byNode.has(k)) byNode.set(k, x);
    }
  }
  if (byNode.size === 0) return entries;
  const candidates = [...byNode.values()];
  const stops = candidates.filter(
    (s) => !candidates.some((o) => o !== s && startsWith(s.at, o.at)),
  );
  return entries.filter((x) => {
    const stop = stops.find((s) => startsWith(x.at, s.at));
    return stop === undefined || stop === x;
  });
}

/** Document order: by the position of each path segment in the value, then by rank. */
function compareEntries(a: Entry, b: Entry, original: unknown): number {
  let parent: unknown = original;
  for (let d = 0; ; d++) {
    const aEnds = d === a.at.length;
    const bEnds = d === b.at.length;
    if (aEnds && bEnds) return a.rank - b.rank;
    if (aEnds) return a.rank - RANK.child;
    if (bEnds) return RANK.child - b.rank;
    const ka = a.at[d]!;
    const kb = b.at[d]!;
    if (ka !== kb) return ordinal(parent, ka) - ordinal(parent, kb);
    parent =
      isObject(parent) || Array.isArray(parent)
        ? (parent as Record<string, unknown>)[ka]
        : undefined;
  }
}

function ordinal(parent: unknown, key: PathSegment): number {
  if (typeof key === 'number') return key;
  const i = isObject(parent) ? Object.keys(parent).indexOf(key) : -1;
  return i < 0 ? Number.MAX_SAFE_INTEGER : i; // a key added by a default comes last
}

function startsWith(path: readonly PathSegment[], prefix: readonly PathSegment[]): boolean {
  return prefix.length <= path.length && prefix.every((s, i) => s === path[i]);
}

/** ajv's JSON pointer (`/services/0/port`) as segments, array indexes as numbers. */
function nodePath(pointer: string, original: unknown): PathSegment[] {
  if (pointer === '') return [];
  const out: PathSegment[] = [];
  let cur: unknown = original;
  for (const part of pointer.slice(1).split('/')) {
    const key = part.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur) && /^(0|[1-9][0-9]*)$/.test(key)) {
      out.push(Number(key));
      cur = cur[Number(key)];
    } else {
      out.push(key);
      cur = isObject(cur) && Object.hasOwn(cur, key) ? cur[key] : undefined;
    }
  }
  return out;
}

/** The value at `path` in the caller's input, or `fallback` where a default put it. */
function valueAt(original: unknown, path: readonly PathSegment[], fallback: unknown): unknown {
  let cur: unknown = original;
  for (const seg of path) {
    if (Array.isArray(cur) && typeof seg === 'number' && seg < cur.length) cur = cur[seg];
    else if (isObject(cur) && typeof seg === 'string' && Object.hasOwn(cur, seg)) cur = cur[seg];
    else return fallback;
  }
  return cur;
}

/** Edit distance with transpositions (optimal string alignment), for "did you mean". */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

function closest(key: string, candidates: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = Math.max(1, Math.floor(key.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(key.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      best = c;
      bestD = d;
    }
  }
  return best;
}
