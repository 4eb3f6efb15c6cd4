/*
 * What `vpm exec` derives from the daemon's `hello` answer: the checks that
 * make it fail fast and clearly, and the environment of the program.
 */

import { describe, expect, it } from 'vitest';
import {
  ExecError,
  execEnvironment,
  parseHello,
  portsList,
  preloadValue,
} from '../../src/exec/environment.js';
import { PRELOAD_LIB } from './helpers.js';

const SOCK = '/run/vpm/vpm0.sock';
const POOL = { lo: 20000, hi: 20999, size: 1000, free: 1000, inUse: 0, quarantined: 0, waiting: 0 };

describe('parseHello', () => {
  it("takes the daemon's ports and the pool's wait", () => {
    expect(
      parseHello('tenant-a', SOCK, {
        aid: 'tenant-a',
        known: true,
        ports: [
          { proto: 'tcp', vport: 9000 },
          { proto: 'udp', vport: 5353 },
        ],
        pool: POOL,
        waitTimeoutMs: 5000,
      }),
    ).toEqual({
      aid: 'tenant-a',
      ports: [
        { proto: 'tcp', vport: 9000 },
        { proto: 'udp', vport: 5353 },
      ],
      waitTimeoutMs: 5000,
      noPool: false,
    });
    // Without a pool: fine for client programs, only binds will be refused.
    expect(parseHello('a', SOCK, { known: true, ports: [], pool: null }).noPool).toBe(true);
    // The wait may also come inside the pool object; none at all means 0.
    expect(
      parseHello('a', SOCK, { known: true, ports: [], pool: { ...POOL, waitTimeoutMs: 250 } })
        .waitTimeoutMs,
    ).toBe(250);
    expect(parseHello('a', SOCK, { known: true, ports: [], pool: POOL }).waitTimeoutMs).toBe(0);
  });

  it('refuses an unknown AID and malformed answers, naming the problem', () => {
    const bad = (result: unknown): ExecError => {
      try {
        parseHello('tenant-a', SOCK, result);
      } catch (e) {
        expect(e).toBeInstanceOf(ExecError);
        return e as ExecError;
      }
      throw new Error(`accepted ${JSON.stringify(result)}`);
    };
    expect(bad({ known: false, ports: [], pool: POOL })).toMatchObject({
      code: 'ERR_UNKNOWN_AID',
      exitCode: 1,
      message: `AID "tenant-a" is not in the configuration of the daemon at ${SOCK}`,
    });
    expect(bad(null).code).toBe('ERR_CONTROL_IO');
    expect(bad({ known: true, pool: POOL }).code).toBe('ERR_CONTROL_IO');
    for (const p of [
      { proto: 'sctp', vport: 1 },
      { proto: 'tcp', vport: 0 },
      { proto: 'tcp', vport: 9000.5 },
      'tcp:9000',
    ])
      expect(bad({ known: true, ports: [p], pool: POOL }).message).toContain('bad port');
  });
});

describe('the environment', () => {
  it('VPM_PORTS lists proto:port', () => {
    expect(portsList([])).toBe('');
    expect(
      portsList([
        { proto: 'tcp', vport: 9000 },
        { proto: 'udp', vport: 53 },
      ]),
    ).toBe('tcp:9000,udp:53');
  });

  it('LD_PRELOAD: the library first, an existing list kept (split at spaces and colons), no duplicate', () => {
    expect(preloadValue('/v/lib.so', undefined)).toBe('/v/lib.so');
    expect(preloadValue('/v/lib.so', '')).toBe('/v/lib.so');
    expect(preloadValue('/v/lib.so', '/a.so /b.so:/c.so')).toBe('/v/lib.so:/a.so:/b.so:/c.so');
    expect(preloadValue('/v/lib.so', '/a.so:/v/lib.so')).toBe('/v/lib.so:/a.so');
    expect(() => preloadValue('/my dir/lib.so', undefined)).toThrow(/space or a colon/);
    expect(() => preloadValue('/a:b/lib.so', undefined)).toThrow(/space or a colon/);
  });

  it('sets the library and its settings on top of the caller’s environment', () => {
    const env = execEnvironment(
      { PATH: '/bin', LD_PRELOAD: '/x.so', VPM_DEBUG: undefined },
      {
        socket: SOCK,
        hello: {
          aid: 'tenant-a',
          ports: [{ proto: 'tcp', vport: 9000 }],
          waitTimeoutMs: 5000,
          noPool: false,
        },
        lib: PRELOAD_LIB,
      },
    );
    expect(env).toEqual({
      PATH: '/bin',
      LD_PRELOAD: `${PRELOAD_LIB}:/x.so`,
      VPM_SOCKET: SOCK,
      VPM_AID: 'tenant-a',
      VPM_PORTS: 'tcp:9000',
      VPM_TIMEOUT_MS: '8000',
      VPM_DEBUG: undefined,
    });
    const debug = execEnvironment(
      {},
      {
        socket: SOCK,
        hello: { aid: 'a', ports: [], waitTimeoutMs: 0, noPool: false },
        lib: PRELOAD_LIB,
        timeoutMs: 100,
        debug: true,
      },
    );
    expect(debug).toMatchObject({ VPM_TIMEOUT_MS: '100', VPM_DEBUG: '1' });
  });

  it('says how to build the library when it is missing', () => {
    expect(() =>
      execEnvironment(
        {},
        {
          socket: SOCK,
          hello: { aid: 'a', ports: [], waitTimeoutMs: 0, noPool: false },
          lib: '/nonexistent/libvpm_preload.so',
        },
      ),
    ).toThrow(
      'the interception library /nonexistent/libvpm_preload.so is not built (run: npm run build:native)',
    );
  });
});
