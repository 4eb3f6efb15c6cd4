/**
 * The control server validates every request once, before its handler runs:
 * the envelope, then the command's `args` against its schema
 * (src/control/requests.ts). A real ControlServer on a unix socket in a
 * temporary directory; requests are raw lines, as the bind library sends them.
 */

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/base/paths.js';
import { COMMANDS } from '../../src/control/requests.js';
import { ControlServer } from '../../src/control/server.js';

let dir = '';
let server: ControlServer;
const seen: { cmd: string; args: unknown }[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vpm-control-test-'));
  server = new ControlServer(join(dir, 'ctl.sock'));
  server.on('ping', (a) => {
    seen.push({ cmd: 'ping', args: a });
    return { pong: true };
  });
  server.on('bind', (a) => {
    seen.push({ cmd: 'bind', args: a });
    // Typed from the schema: no checks, no casts.
    return { port: a.vport + 10000, proto: a.proto.toUpperCase() };
  });
  server.on('release', (a) => {
    seen.push({ cmd: 'release', args: a });
    return { released: 0 };
  });
  server.on('connect', (a) => {
    seen.push({ cmd: 'connect', args: a });
    throw Object.assign(new Error(`no such AID ${a.aid}`), { code: 'ERR_UNKNOWN_AID' });
  });
  await server.listen();
});

afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Sends `lines` on one connection; resolves with the first `count` answers, parsed. */
function exchange(lines: string[], count = lines.length): Promise<Record<string, unknown>[]> {
  return new Promise((resolve, reject) => {
    const c: Socket = connect(server.path);
    const answers: Record<string, unknown>[] = [];
    let buf = '';
    c.setEncoding('utf8');
    c.on('error', reject);
    c.on('connect', () => c.write(lines.map((l) => `${l}\n`).join('')));
    c.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        answers.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
      if (answers.length >= count) {
        c.end();
        resolve(answers);
      }
    });
  });
}

const one = async (line: string) => (await exchange([line]))[0]!;
const req = (cmd: string, args?: unknown, extra: Record<string, unknown> = {}) =>
  JSON.stringify({ v: 1, id: 7, cmd, ...(args === undefined ? {} : { args }), ...extra });

const bind = { aid: 'tenant-a', proto: 'tcp', vport: 9000, addr: '0.0.0.0', pid: 4243, fd: 7 };

describe('the envelope', () => {
  it('answers a valid request, with or without args', async () => {
    expect(await one(req('ping', {}))).toEqual({ v: 1, id: 7, ok: true, result: { pong: true } });
    expect(await one(req('ping'))).toMatchObject({ ok: true });
  });

  it('refuses another protocol version, also when v is missing', async () => {
    expect(await one(JSON.stringify({ v: 2, id: 1, cmd: 'ping' }))).toEqual({
      v: 1,
      id: 1,
      ok: false,
      error: { code: 'ERR_CONTROL_VERSION', message: 'protocol version 2 not supported (want 1)' },
    });
    expect(await one('{}')).toMatchObject({
      id: null,
      error: {
        code: 'ERR_CONTROL_VERSION',
        message: 'protocol version undefined not supported (want 1)',
      },
    });
  });

  it('refuses what is not a request, naming the field and the value', async () => {
    expect(await one('{"v":1,')).toEqual({
      v: 1,
      id: null,
      ok: false,
      error: { code: 'ERR_CONTROL_BAD_REQUEST', message: 'request is not valid JSON' },
    });
    expect((await one('[1]')).error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: 'bad request: [1] is an array, expected an object',
    });
    expect(await one(JSON.stringify({ v: 1, id: true, cmd: 'ping' }))).toMatchObject({
      id: null,
      error: {
        code: 'ERR_CONTROL_BAD_REQUEST',
        message: 'bad request: id: true is a boolean, expected a number or a string',
      },
    });
    expect((await one(JSON.stringify({ v: 1, id: 2, cmd: '' }))).error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: 'bad request: cmd: "" is too short: 0 characters, expected at least 1',
    });
    expect((await one(req('ping', [], { oneway: 1, colour: 'red' }))).error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message:
        'bad request: args: [] is an array, expected an object; oneway: 1 is an integer, expected a boolean; colour: unknown field (allowed here: v, id, cmd, args, oneway)',
    });
  });

  it('refuses an unknown command, and a line that is too long', async () => {
    expect((await one(req('dance'))).error).toEqual({
      code: 'ERR_CONTROL_UNKNOWN_COMMAND',
      message: 'unknown command "dance"',
    });
    // A known command without a handler here is unknown to this server too.
    expect((await one(req('stats'))).error).toMatchObject({ code: 'ERR_CONTROL_UNKNOWN_COMMAND' });
    const [long, after] = await exchange(['x'.repeat(70 * 1024), req('ping')], 2);
    expect(long!.error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: 'request line longer than 65536 bytes',
    });
    expect(after).toMatchObject({ ok: true });
  });
});

describe('the args of a command', () => {
  it('reach the handler validated and typed, as a copy', async () => {
    seen.length = 0;
    expect(await one(req('bind', bind))).toMatchObject({
      ok: true,
      result: { port: 19000, proto: 'TCP' },
    });
    expect(seen).toEqual([{ cmd: 'bind', args: bind }]);
  });

  it('are refused against their schema before the handler runs, naming the field and the value', async () => {
    seen.length = 0;
    expect((await one(req('bind', { ...bind, vport: 'x' }))).error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: 'bad "bind" request: args.vport: "x" is a string, expected an integer',
    });
    const { fd: _, ...noFd } = bind;
    expect((await one(req('bind', { ...noFd, proto: 'sctp', prot: 'tcp' }))).error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message:
        'bad "bind" request: args.fd: required field is missing; args.proto: "sctp" is not one of "tcp", "udp"; args.prot: unknown field; did you mean "proto"?',
    });
    expect((await one(req('bind', { ...bind, vport: 70000, pid: 0 }))).error).toMatchObject({
      message:
        'bad "bind" request: args.vport: 70000 is above the maximum 65535; args.pid: 0 is below the minimum 1',
    });
    expect(
      (await one(req('connect', { aid: 'tenant-a', proto: 'tcp', local: 'nonsense' }))).error,
    ).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message:
        'bad "connect" request: args.local: "nonsense" is not valid here: expected "a.b.c.d:port" or "[v6]:port"',
    });
    // An IPv6 endpoint has brackets; without them it is refused.
    expect(
      (await one(req('connect', { aid: 'tenant-a', proto: 'tcp', local: '2001:2::1:40312' })))
        .error,
    ).toMatchObject({ code: 'ERR_CONTROL_BAD_REQUEST' });
    // A bind's v6only is a boolean.
    expect((await one(req('bind', { ...bind, addr: '::', v6only: 1 }))).error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: 'bad "bind" request: args.v6only: 1 is an integer, expected a boolean',
    });
    // A UDP report names its socket: fd is a descriptor number like bind's.
    expect(
      (await one(req('connect', { aid: 'tenant-a', proto: 'udp', local: '0.0.0.0:1', fd: -1 })))
        .error,
    ).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: 'bad "connect" request: args.fd: -1 is below the minimum 0',
    });
    expect((await one(req('ping', { verbose: true }))).error).toEqual({
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: 'bad "ping" request: args.verbose: unknown field (allowed here: )',
    });
    expect(seen).toEqual([]);
  });

  it("a handler's error keeps its code", async () => {
    expect(
      (await one(req('connect', { aid: 'tenant-z', proto: 'tcp', local: '0.0.0.0:40312' }))).error,
    ).toEqual({ code: 'ERR_UNKNOWN_AID', message: 'no such AID tenant-z' });
  });

  it('one-way: a valid request runs its handler, an invalid one is dropped, neither is answered', async () => {
    seen.length = 0;
    const release = { aid: 'tenant-a', proto: 'tcp', vport: 9000, port: 20001, pid: 4243, fd: 7 };
    const answers = await exchange(
      [
        req('release', release, { oneway: true, id: 1 }),
        req('release', { ...release, fd: 'seven' }, { oneway: true, id: 2 }),
        req('dance', {}, { oneway: true, id: 3 }),
        req('ping', {}, { id: 4 }),
      ],
      1,
    );
    expect(answers).toEqual([{ v: 1, id: 4, ok: true, result: { pong: true } }]);
    expect(seen).toEqual([
      { cmd: 'release', args: release },
      { cmd: 'ping', args: {} },
    ]);
  });
});

describe('docs/control-protocol.md', () => {
  it('names every command', () => {
    const doc = readFileSync(join(packageRoot(), 'docs', 'control-protocol.md'), 'utf8');
    const missing = Object.keys(COMMANDS).filter((c) => !doc.includes(`| \`${c}\` |`));
    expect(missing).toEqual([]);
  });
});
