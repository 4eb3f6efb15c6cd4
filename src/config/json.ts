/**
 * A strict JSON (RFC 8259) parser for the config file. JSON.parse would do the
 * parsing, but not the reporting: its messages differ between Node versions, some
 * carry no position at all, and it silently keeps the last of two equal keys, so
 * `{"port": 9000, ..., "port": 9001}` would quietly run with 9001. This parser
 * gives every syntax error a line and column, names the usual mistakes (trailing
 * comma, comments, single quotes), and records duplicate keys so that the config
 * loader can report them as problems.
 *
 * Nesting is limited (MAX_DEPTH) so that a hostile or broken file cannot exhaust
 * the stack; the config is five levels deep.
 */

import { VpmError } from '../base/errors.js';
import type { PathSegment } from './validator.js';

export const MAX_DEPTH = 64;

/**
 * Text that is not JSON. Its code is the one the config loader reports it with
 * (a ConfigError ERR_CONFIG_PARSE whose problem has this line and column).
 */
export class JsonSyntaxError extends VpmError<'ERR_CONFIG_PARSE'> {
  constructor(
    message: string,
    /** 1-based line. */
    readonly line: number,
    /** 1-based column, in UTF-16 code units. */
    readonly column: number,
    /** 0-based offset into the text. */
    readonly offset: number,
  ) {
    super('ERR_CONFIG_PARSE', message);
  }
}

export interface DuplicateKey {
  /** Path of the repeated member. */
  readonly path: readonly PathSegment[];
  readonly line: number;
  readonly column: number;
}

export interface ParsedJson {
  readonly value: unknown;
  readonly duplicates: readonly DuplicateKey[];
}

/** 1-based line and column of `offset` in `text`. */
export function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 0x0a) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: offset - lineStart + 1 };
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const ESCAPES: Record<string, string> = {
  '"': '"',
  '\\': '\\',
  '/': '/',
  b: '\b',
  f: '\f',
  n: '\n',
  r: '\r',
  t: '\t',
};

export function parseJson(text: string): ParsedJson {
  return new Parser(text).parseDocument();
}

class Parser {
  private i = 0;
  private readonly duplicates: DuplicateKey[] = [];

  constructor(private readonly s: string) {}

  parseDocument(): ParsedJson {
    // A UTF-8 byte order mark is not JSON, but editors write it; skip it.
    if (this.s.charCodeAt(0) === 0xfeff) this.i = 1;
    this.ws();
    if (this.i >= this.s.length) this.fail('the file is empty, expected a JSON value');
    const value = this.value([], 0);
    this.ws();
    if (this.i < this.s.length) this.fail(`${this.here()} after the end of the JSON value`);
    return { value, duplicates: this.duplicates };
  }

  private fail(message: string, at = this.i): never {
    const { line, column } = lineColumn(this.s, at);
    throw new JsonSyntaxError(message, line, column, at);
  }

  /** The character at the cursor, for messages. */
  private here(): string {
    if (this.i >= this.s.length) return 'unexpected end of file';
    const c = this.s[this.i]!;
    if (c === '/' && (this.s[this.i + 1] === '/' || this.s[this.i + 1] === '*'))
      return 'comments are not allowed in JSON';
    if (c === "'") return 'single quotes are not allowed in JSON (use double quotes)';
    const code = c.charCodeAt(0);
    const shown = code < 0x20 || code === 0x7f ? `\\u${code.toString(16).padStart(4, '0')}` : c;
    return `unexpected character '${shown}'`;
  }

  private ws(): void {
    const s = this.s;
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else break;
    }
  }

  private value(path: PathSegment[], depth: number): unknown {
    if (depth > MAX_DEPTH) this.fail(`nesting deeper than ${MAX_DEPTH} levels`);
    const c = this.s[this.i];
    if (c === '{') return this.object(path, depth);
    if (c === '[') return this.array(path, depth);
    if (c === '"') return this.string();
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return this.number();
    for (const [word, v] of [
      ['true', true],
      ['false', false],
      ['null', null],
    ] as const) {
      if (this.s.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    this.fail(`${this.here()}, expected a JSON value`);
  }

  private object(path: PathSegment[], depth: number): Record<string, unknown> {
    const o: Record<string, unknown> = {};
    this.i++; // {
    this.ws();
    if (this.s[this.i] === '}') {
      this.i++;
      return o;
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') {
        if (this.s[this.i] === '}') this.fail('trailing comma before } is not allowed in JSON');
        this.fail(`${this.here()}, expected a property name in double quotes`);
      }
      const keyAt = this.i;
      const key = this.string();
      if (Object.hasOwn(o, key)) {
        const { line, column } = lineColumn(this.s, keyAt);
        this.duplicates.push({ path: [...path, key], line, column });
      }
      this.ws();
      if (this.s[this.i] !== ':') this.fail(`${this.here()}, expected ':' after the property name`);
      this.i++;
      this.ws();
      const v = this.value([...path, key], depth + 1);
      // defineProperty: a key "__proto__" must become a plain member, not the prototype.
      Object.defineProperty(o, key, {
        value: v,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      this.ws();
      const c = this.s[this.i];
      if (c === ',') {
        this.i++;
        continue;
      }
      if (c === '}') {
        this.i++;
        return o;
      }
      this.fail(`${this.here()}, expected ',' or '}' after the property value`);
    }
  }

  private array(path: PathSegment[], depth: number): unknown[] {
    const a: unknown[] = [];
    this.i++; // [
    this.ws();
    if (this.s[this.i] === ']') {
      this.i++;
      return a;
    }
    for (;;) {
      this.ws();
      if (this.s[this.i] === ']') this.fail('trailing comma before ] is not allowed in JSON');
      a.push(this.value([...path, a.length], depth + 1));
      this.ws();
      const c = this.s[this.i];
      if (c === ',') {
        this.i++;
        continue;
      }
      if (c === ']') {
        this.i++;
        return a;
      }
      this.fail(`${this.here()}, expected ',' or ']' after the array element`);
    }
  }

  private string(): string {
    const start = this.i;
    this.i++; // opening quote
    let out = '';
    let runStart = this.i;
    for (;;) {
      if (this.i >= this.s.length) this.fail('unterminated string', start);
      const c = this.s.charCodeAt(this.i);
      if (c === 0x22) {
        out += this.s.slice(runStart, this.i);
        this.i++;
        return out;
      }
      if (c < 0x20) this.fail('control character in string (escape it, e.g. \\n)');
      if (c !== 0x5c) {
        this.i++;
        continue;
      }
      out += this.s.slice(runStart, this.i);
      const e = this.s[this.i + 1];
      if (e === 'u') {
        const hex = this.s.slice(this.i + 2, this.i + 6);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) this.fail('bad \\u escape: expected 4 hex digits');
        out += String.fromCharCode(Number.parseInt(hex, 16));
        this.i += 6;
      } else if (e !== undefined && Object.hasOwn(ESCAPES, e)) {
        out += ESCAPES[e];
        this.i += 2;
      } else {
        this.fail(`bad escape '\\${e ?? ''}' in string`);
      }
      runStart = this.i;
    }
  }

  private number(): number {
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(this.s);
    if (!m) this.fail(`${this.here()}, expected a number`);
    const n = Number(m[0]);
    if (!Number.isFinite(n)) this.fail(`number ${m[0]} is out of range`);
    const next = this.s[this.i + m[0].length];
    if (next !== undefined && /[0-9.eE]/.test(next)) {
      this.i += m[0].length;
      this.fail(`malformed number (leading zeros and a bare '.' are not allowed)`);
    }
    this.i += m[0].length;
    return n;
  }
}
