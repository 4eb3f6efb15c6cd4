/**
 * A small interpreter for the subset of JSON Schema (draft 2020-12) that
 * docs/config.schema.json uses, so that the published schema is the one and only
 * description of the config file's structure: there is no second, hand-written
 * copy of it here.
 *
 * Theory of operation: `compileSchema(schema)` checks once that the schema uses
 * only keywords this interpreter implements (an unknown keyword would otherwise be
 * silently ignored, and the schema would promise more than vpm checks) and that
 * every `default` is valid against its own subschema. `validate(value)` then walks
 * the value and the schema together. It never throws on bad input and never stops
 * at the first problem: it collects every problem, each with its path
 * (`services[0].port`), the bad value and what was expected, and it returns a copy
 * of the value with the schema's defaults filled in (the input is not modified).
 *
 * Supported: type, properties, required, additionalProperties, items, enum, const,
 * minimum, maximum, minLength, maxLength, pattern, minItems, maxItems, uniqueItems,
 * oneOf, anyOf, default, local `$ref` (`#/$defs/...`), and the annotations $schema,
 * $id, $defs, $comment, title, description, examples.
 */

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

export interface ValidationResult {
  readonly problems: readonly SchemaProblem[];
  /** A copy of the input with defaults filled in; meaningful only without problems. */
  readonly value: unknown;
}

export interface CompiledSchema {
  validate(value: unknown): ValidationResult;
}

type JsonType = 'null' | 'boolean' | 'object' | 'array' | 'number' | 'integer' | 'string';

interface Schema {
  $ref?: string;
  title?: string;
  default?: unknown;
  type?: JsonType | JsonType[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean | Schema;
  items?: Schema;
  enum?: unknown[];
  const?: unknown;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  minItems?: number;
  maxItems?: number;
  uniqueItems?: boolean;
  oneOf?: Schema[];
  anyOf?: Schema[];
}

const ANNOTATIONS = new Set([
  '$schema',
  '$id',
  '$defs',
  '$comment',
  'title',
  'description',
  'examples',
  'default',
]);
const KEYWORDS = new Set([
  '$ref',
  'type',
  'properties',
  'required',
  'additionalProperties',
  'items',
  'enum',
  'const',
  'minimum',
  'maximum',
  'minLength',
  'maxLength',
  'pattern',
  'minItems',
  'maxItems',
  'uniqueItems',
  'oneOf',
  'anyOf',
]);
const TYPES = new Set<string>([
  'null',
  'boolean',
  'object',
  'array',
  'number',
  'integer',
  'string',
]);

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

/** The JSON type of a value as a noun phrase: "a string", "an array", ... */
function typeNoun(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a number';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return 'a string';
  if (typeof v === 'boolean') return 'a boolean';
  return typeof v; // not JSON at all (undefined, a function, ...): only from parseConfig callers
}

const TYPE_NOUNS: Record<JsonType, string> = {
  null: 'null',
  boolean: 'a boolean',
  object: 'an object',
  array: 'an array',
  number: 'a number',
  integer: 'an integer',
  string: 'a string',
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function hasType(v: unknown, t: JsonType): boolean {
  switch (t) {
    case 'null':
      return v === null;
    case 'boolean':
      return typeof v === 'boolean';
    case 'object':
      return isObject(v);
    case 'array':
      return Array.isArray(v);
    case 'number':
      return typeof v === 'number' && Number.isFinite(v);
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v);
    case 'string':
      return typeof v === 'string';
  }
}

/** JSON equality (instance equality as JSON Schema defines it for enum/const/uniqueItems). */
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

/** Sets an own data property (safe for keys like "__proto__"). */
function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

class Compiled implements CompiledSchema {
  private readonly regexes = new Map<string, RegExp>();

  constructor(private readonly root: Schema) {
    this.check(root, '#', new Set());
  }

  validate(value: unknown): ValidationResult {
    const problems: SchemaProblem[] = [];
    const out = this.walk(this.root, value, [], problems);
    return { problems, value: out };
  }

  /** Schema self-check: known keywords only, well-formed values, valid defaults. */
  private check(s: unknown, where: string, seen: Set<unknown>): void {
    if (!isObject(s)) throw new Error(`config schema: ${where} is not a schema object`);
    if (seen.has(s)) return;
    seen.add(s);
    for (const k of Object.keys(s)) {
      if (!KEYWORDS.has(k) && !ANNOTATIONS.has(k))
        throw new Error(
          `config schema: ${where} uses "${k}", which the validator does not implement`,
        );
    }
    const sch = s as Schema;
    if (sch.type !== undefined) {
      for (const t of Array.isArray(sch.type) ? sch.type : [sch.type])
        if (!TYPES.has(t)) throw new Error(`config schema: ${where}: unknown type "${t}"`);
    }
    if (sch.$ref !== undefined) this.check(this.resolve(sch.$ref), sch.$ref, seen);
    if (sch.pattern !== undefined) this.regex(sch.pattern);
    for (const [k, sub] of Object.entries(sch.properties ?? {}))
      this.check(sub, `${where}/properties/${k}`, seen);
    if (isObject(sch.additionalProperties))
      this.check(sch.additionalProperties, `${where}/additionalProperties`, seen);
    if (sch.items !== undefined) this.check(sch.items, `${where}/items`, seen);
    for (const [kw, list] of [
      ['oneOf', sch.oneOf],
      ['anyOf', sch.anyOf],
    ] as const) {
      if (list === undefined) continue;
      if (!Array.isArray(list) || list.length === 0)
        throw new Error(`config schema: ${where}/${kw} must be a non-empty array`);
      list.forEach((sub, i) => {
        this.check(sub, `${where}/${kw}/${i}`, seen);
      });
    }
    const defs = (s as { $defs?: unknown }).$defs;
    if (defs !== undefined) {
      if (!isObject(defs)) throw new Error(`config schema: ${where}/$defs is not an object`);
      for (const [k, sub] of Object.entries(defs)) this.check(sub, `${where}/$defs/${k}`, seen);
    }
    if ('default' in sch) {
      const problems: SchemaProblem[] = [];
      this.walk(sch, sch.default, [], problems);
      if (problems.length > 0)
        throw new Error(
          `config schema: ${where}: the default ${showValue(sch.default)} is invalid: ${problems[0]!.message}`,
        );
    }
  }

  private resolve(ref: string): Schema {
    const m = /^#\/\$defs\/([A-Za-z0-9_-]+)$/.exec(ref);
    const defs = (this.root as { $defs?: Record<string, Schema> }).$defs;
    const target = m && defs && Object.hasOwn(defs, m[1]!) ? defs[m[1]!] : undefined;
    if (!target) throw new Error(`config schema: cannot resolve $ref "${ref}"`);
    return target;
  }

  private regex(pattern: string): RegExp {
    let re = this.regexes.get(pattern);
    if (!re) {
      // JSON Schema patterns are ECMA-262 and unanchored; "u" makes them
      // code-point based as the spec asks.
      re = new RegExp(pattern, 'u');
      this.regexes.set(pattern, re);
    }
    return re;
  }

  /** Validates `v` against `s`, appends problems, returns `v` with defaults filled in. */
  private walk(s: Schema, v: unknown, path: PathSegment[], problems: SchemaProblem[]): unknown {
    const add = (message: string, at: PathSegment[] = path, value: unknown = v) => {
      problems.push({ path: [...at], value, message });
    };

    let title = s.title;
    let out = v;
    if (s.$ref !== undefined) {
      const target = this.resolve(s.$ref);
      title ??= target.title;
      const before = problems.length;
      out = this.walk(target, v, path, problems);
      // The referenced schema already said what is wrong with this value's type;
      // the sibling keywords here would only repeat it.
      if (problems.length > before) return out;
    }

    if (s.type !== undefined) {
      const types = Array.isArray(s.type) ? s.type : [s.type];
      if (!types.some((t) => hasType(v, t))) {
        const expected = types.map((t) => TYPE_NOUNS[t]).join(' or ');
        if (typeof v === 'number' && types.includes('integer') && Number.isFinite(v))
          add(`${showValue(v)} is not an integer`);
        else add(`${showValue(v)} is ${typeNoun(v)}, expected ${expected}`);
        return v; // nothing below makes sense for the wrong type
      }
    }

    if (s.enum !== undefined && !s.enum.some((e) => jsonEqual(e, v))) {
      add(`${showValue(v)} is not one of ${s.enum.map((e) => showValue(e)).join(', ')}`);
      return v;
    }
    if ('const' in s && !jsonEqual(s.const, v)) {
      add(`${showValue(v)} is not allowed here: the only allowed value is ${showValue(s.const)}`);
      return v;
    }

    if (typeof v === 'number') {
      if (s.minimum !== undefined && v < s.minimum)
        add(`${showValue(v)} is below the minimum ${s.minimum}`);
      if (s.maximum !== undefined && v > s.maximum)
        add(`${showValue(v)} is above the maximum ${s.maximum}`);
    }

    if (typeof v === 'string') {
      const len = [...v].length;
      if (s.minLength !== undefined && len < s.minLength)
        add(`${showValue(v)} is too short: ${len} characters, expected at least ${s.minLength}`);
      if (s.maxLength !== undefined && len > s.maxLength)
        add(`${showValue(v)} is too long: ${len} characters, expected at most ${s.maxLength}`);
      if (s.pattern !== undefined && !this.regex(s.pattern).test(v))
        add(
          title !== undefined
            ? `${showValue(v)} is not valid here: expected ${title}`
            : `${showValue(v)} does not match the pattern ${s.pattern}`,
        );
    }

    if (Array.isArray(v)) {
      if (s.minItems !== undefined && v.length < s.minItems)
        add(`${showValue(v)} has ${v.length} items, expected at least ${s.minItems}`);
      if (s.maxItems !== undefined && v.length > s.maxItems)
        add(`the list has ${v.length} items, expected at most ${s.maxItems}`, path, undefined);
      if (s.uniqueItems === true) {
        for (let j = 1; j < v.length; j++) {
          const i = v.findIndex((x, k) => k < j && jsonEqual(x, v[j]));
          if (i >= 0)
            add(`${showValue(v[j])} repeats ${formatPath([...path, i])}`, [...path, j], v[j]);
        }
      }
      if (s.items !== undefined) {
        const items = s.items;
        out = v.map((x, i) => this.walk(items, x, [...path, i], problems));
      }
    }

    const objectKeywords =
      s.properties !== undefined ||
      s.required !== undefined ||
      s.additionalProperties !== undefined;
    if (objectKeywords && isObject(v)) {
      const props = s.properties ?? {};
      const copy: Record<string, unknown> = {};
      for (const key of s.required ?? []) {
        if (!Object.hasOwn(v, key)) add('required field is missing', [...path, key], undefined);
      }
      for (const key of Object.keys(v)) {
        const sub = Object.hasOwn(props, key) ? props[key] : undefined;
        if (sub !== undefined) {
          setOwn(copy, key, this.walk(sub, v[key], [...path, key], problems));
        } else if (s.additionalProperties === false) {
          const known = Object.keys(props);
          const hint = closest(key, known);
          add(
            hint !== null
              ? `unknown field; did you mean "${hint}"?`
              : `unknown field (allowed here: ${known.join(', ')})`,
            [...path, key],
            v[key],
          );
        } else if (isObject(s.additionalProperties)) {
          setOwn(copy, key, this.walk(s.additionalProperties, v[key], [...path, key], problems));
        } else {
          setOwn(copy, key, v[key]);
        }
      }
      for (const [key, sub] of Object.entries(props)) {
        if (Object.hasOwn(v, key) || !('default' in sub)) continue;
        // A default is a fresh copy, completed by its own subschema's defaults.
        setOwn(copy, key, this.walk(sub, structuredClone(sub.default), [...path, key], problems));
      }
      out = copy;
    }

    if (s.oneOf !== undefined) out = this.alternatives(s.oneOf, 'oneOf', v, path, problems, out);
    if (s.anyOf !== undefined) out = this.alternatives(s.anyOf, 'anyOf', v, path, problems, out);
    return out;
  }

  private alternatives(
    branches: Schema[],
    kind: 'oneOf' | 'anyOf',
    v: unknown,
    path: PathSegment[],
    problems: SchemaProblem[],
    out: unknown,
  ): unknown {
    const results = branches.map((b) => {
      const p: SchemaProblem[] = [];
      const value = this.walk(b, v, path, p);
      return { problems: p, value, title: b.title };
    });
    const ok = results.filter((r) => r.problems.length === 0);
    if (ok.length === 1 || (kind === 'anyOf' && ok.length > 1)) return ok[0]!.value;
    const forms = results.map((r, i) => r.title ?? `form ${i + 1}`).join(', ');
    if (ok.length > 1) {
      problems.push({
        path: [...path],
        value: v,
        message: `${showValue(v)} is ambiguous: it matches more than one of ${forms}`,
      });
      return out;
    }
    // No branch matches. If one branch comes clearly closest, its problems are
    // the useful ones; otherwise say which forms are allowed.
    const fewest = Math.min(...results.map((r) => r.problems.length));
    const closestBranches = results.filter((r) => r.problems.length === fewest);
    if (closestBranches.length === 1) problems.push(...closestBranches[0]!.problems);
    else
      problems.push({
        path: [...path],
        value: v,
        message: `${showValue(v)} matches none of the allowed forms: ${forms}`,
      });
    return out;
  }
}

/** Checks the schema itself and returns its validator; throws Error on a schema bug. */
export function compileSchema(schema: unknown): CompiledSchema {
  if (!isObject(schema)) throw new Error('config schema: the schema is not an object');
  return new Compiled(schema as Schema);
}
