/*
 * The control socket's access policy (src/control/access.ts) decided for
 * callers given by hand, and the socket's mode from it; the kernel's side of
 * it (SO_PEERCRED from real users) is test/integration/users.test.ts.
 */

import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { AccessPolicy, type NameLookup, type Peer } from '../../src/control/access.js';
import { ControlServer } from '../../src/control/server.js';
import { unreadableByOthers } from '../../src/exec/environment.js';

const USERS: Record<string, number> = { root: 0, nobody: 65534, alice: 1001 };
const GROUPS: Record<string, number> = { nogroup: 65534, vpm: 990, mon: 991 };
const lookup: NameLookup = {
  user: (n) => USERS[n] ?? null,
  group: (n) => GROUPS[n] ?? null,
  userName: (uid) => Object.keys(USERS).find((k) => USERS[k] === uid) ?? null,
};

function config(extra: Record<string, unknown> = {}, users: unknown = ['alice', 65534]) {
  return parseConfig(
    {
      services: [{ name: 'web', address: '198.19.0.9', port: 9000 }],
      applications: [users === null ? { aid: 'a' } : { aid: 'a', users }, { aid: 'b' }],
      ...extra,
    },
    'test.json',
  );
}

const peer = (uid: number, pid = 4242, gid = uid, groups: number[] = []): Peer => ({
  uid,
  gid,
  pid,
  groups,
});
const code = (p: AccessPolicy, cmd: string, args: Record<string, unknown>, who: Peer) =>
  p.decide(cmd as never, args, who)?.code ?? 'ok';

describe('AccessPolicy', () => {
  const p = AccessPolicy.fromConfig(
    config({ control: { group: 'vpm', monitorGroup: 'mon' } }),
    lookup,
  );

  it('root may do everything; a user of an AID only that AID, with its own pid', () => {
    const root = peer(0);
    for (const cmd of ['reload', 'flows', 'stats', 'bind', 'hello'])
      expect(code(p, cmd, { aid: 'b', pid: 1 }, root)).toBe('ok');
    const alice = peer(1001, 777);
    expect(code(p, 'bind', { aid: 'a', pid: 777 }, alice)).toBe('ok');
    expect(code(p, 'connect', { aid: 'a', pid: 777 }, alice)).toBe('ok');
    expect(code(p, 'bind', { aid: 'b', pid: 777 }, alice)).toBe('ERR_AID_DENIED');
    expect(code(p, 'connect', { aid: 'b', pid: 777 }, alice)).toBe('ERR_AID_DENIED');
    expect(code(p, 'bind', { aid: 'a', pid: 1 }, alice)).toBe('ERR_PID_MISMATCH');
    expect(code(p, 'reload', {}, alice)).toBe('ERR_CONTROL_DENIED');
    expect(code(p, 'flows', {}, alice)).toBe('ERR_CONTROL_DENIED');
    expect(code(p, 'services', {}, alice)).toBe('ok');
    expect(code(p, 'ping', {}, alice)).toBe('ok');
    // A numeric uid in users counts like a name.
    expect(code(p, 'bind', { aid: 'a', pid: 5 }, peer(65534, 5))).toBe('ok');
  });

  it('the monitoring group (primary or supplementary) reads, and only reads', () => {
    for (const m of [peer(2000, 9, 991), peer(2000, 9, 100, [991])]) {
      for (const cmd of ['flows', 'stats', 'instances', 'services', 'ping'])
        expect(code(p, cmd, {}, m)).toBe('ok');
      expect(code(p, 'reload', {}, m)).toBe('ERR_CONTROL_DENIED');
      expect(code(p, 'bind', { aid: 'a', pid: 9 }, m)).toBe('ERR_CONTROL_DENIED');
      expect(code(p, 'hello', { aid: 'a', pid: 9 }, m)).toBe('ERR_CONTROL_DENIED');
    }
    // A caller the kernel could not identify may only ping.
    expect(code(p, 'flows', {}, peer(-1))).toBe('ERR_CONTROL_DENIED');
    expect(code(p, 'ping', {}, peer(-1))).toBe('ok');
  });

  it('the socket mode: root-only without grants, the group 0660, 0666 for users without a group', () => {
    expect(AccessPolicy.fromConfig(config({}, null), lookup).socketMode()).toEqual({
      gid: null,
      mode: 0o600,
    });
    expect(AccessPolicy.fromConfig(config({}, ['root']), lookup).socketMode()).toEqual({
      gid: null,
      mode: 0o600,
    });
    expect(p.socketMode()).toEqual({ gid: 990, mode: 0o660 });
    expect(
      AccessPolicy.fromConfig(
        config({ control: { monitorGroup: 991 } }, null),
        lookup,
      ).socketMode(),
    ).toEqual({ gid: 991, mode: 0o660 });
    expect(AccessPolicy.fromConfig(config(), lookup).socketMode()).toEqual({
      gid: null,
      mode: 0o666,
    });
  });

  it('the AID of a local client by its user: only AIDs that list users', () => {
    expect(p.aidOfUser(1001)).toBe(0);
    expect(p.aidOfUser(0)).toBe(-1);
  });

  it('a user or group this host does not know is a config error naming it', () => {
    expect(() => AccessPolicy.fromConfig(config({}, ['mallory']), lookup)).toThrow(
      'test.json: applications[0].users[0]: there is no user "mallory" on this host',
    );
    expect(() => AccessPolicy.fromConfig(config({ control: { group: 'nosuch' } }), lookup)).toThrow(
      'control.group: there is no group "nosuch" on this host',
    );
  });
});

describe('ControlServer: the socket mode is in place before anyone can connect', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vpm-access-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("creates the socket with the policy's mode and group, and makes its directory searchable", async () => {
    const sub = join(dir, 'run');
    mkdirSync(sub, { mode: 0o700 });
    const path = join(sub, 'c.sock');
    const policy = AccessPolicy.fromConfig(config({ control: { group: 'nogroup' } }), lookup);
    const s = new ControlServer(path, () => policy);
    s.on('ping', () => ({ pong: true }));
    await s.listen();
    try {
      const st = statSync(path);
      expect(st.mode & 0o777).toBe(0o660);
      expect(st.gid).toBe(65534);
      expect(statSync(sub).mode & 0o011).toBe(0o011);
      // A connection from this (root) process is decided as root's.
      const c = connect(path);
      await new Promise((r) => c.once('connect', r));
      expect(s.stats()).toMatchObject({ connections: 1, refused: { command: 0 } });
      c.destroy();
    } finally {
      await s.close();
    }
  });
});

describe('unreadableByOthers (vpm exec: can a dropped program load the library?)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vpm-lib-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names the directory or the file that another user cannot get through', () => {
    const lib = join(dir, 'libx.so');
    writeFileSync(lib, '', { mode: 0o644 });
    chmodSync(dir, 0o700);
    expect(unreadableByOthers(lib)).toBe(`${dir} (mode 0700) is not searchable by other users`);
    chmodSync(dir, 0o755);
    expect(unreadableByOthers(lib)).toBeNull();
    chmodSync(lib, 0o600);
    expect(unreadableByOthers(lib)).toBe(`${lib} is not readable by other users`);
  });
});
