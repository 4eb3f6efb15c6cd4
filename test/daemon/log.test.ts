import { describe, expect, it } from 'vitest';
import { createLogger, prettyLine } from '../../src/daemon/log.js';

describe('daemon logs', () => {
  it('renders a pino line for people on a terminal: time, level, event, message, fields', () => {
    const t = new Date(2026, 10, 25, 12, 0, 1).getTime();
    const line = JSON.stringify({
      level: 30,
      time: t,
      pid: 7,
      event: 'flow_refused',
      msg: 'connection refused',
      reason: 'refused_no_selector',
      client: '198.18.1.200:40000',
      flow: { id: 3 },
    });
    expect(prettyLine(line)).toBe(
      '12:00:01 INFO  flow_refused         connection refused  reason=refused_no_selector client=198.18.1.200:40000 flow={"id":3}\n',
    );
  });

  it('passes through what is not a JSON log line', () => {
    expect(prettyLine('plain text')).toBe('plain text');
  });

  it('a logger for a terminal writes rendered lines and honours its level', () => {
    const lines: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((s: string) => {
      lines.push(String(s));
      return true;
    }) as typeof process.stdout.write;
    try {
      const log = createLogger('info', true);
      log.info({ event: 'ready', tun: 'vpm0' }, 'vpm up');
      log.debug({ event: 'flow_created' }, 'not at info');
    } finally {
      process.stdout.write = write;
    }
    expect(lines.join('')).toMatch(/^\d\d:\d\d:\d\d INFO {2}ready +vpm up {2}tun=vpm0\n$/);
  });
});
