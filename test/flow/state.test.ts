import { describe, expect, it } from 'vitest';
import {
  FIN_FROM_CLIENT,
  FIN_FROM_SERVER,
  FlowState,
  isReusable,
  nextState,
} from '../../src/flow/state.js';
import { TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../../src/wire/tcp.js';

describe('TCP state as followed by vpm', () => {
  it('walks the handshake, both FINs and into TIME_WAIT', () => {
    let s: number = FlowState.SYN_SENT;
    s = nextState(s, 0, TCP_SYN | TCP_ACK, true); // wrong direction: no change
    expect(s).toBe(FlowState.SYN_SENT);
    s = nextState(s, 0, TCP_SYN | TCP_ACK, false);
    expect(s).toBe(FlowState.SYN_RECEIVED);
    s = nextState(s, 0, TCP_ACK, true);
    expect(s).toBe(FlowState.ESTABLISHED);
    s = nextState(s, 0, TCP_ACK | TCP_FIN, false);
    expect(s).toBe(FlowState.FIN_WAIT);
    s = nextState(s, FIN_FROM_SERVER, TCP_ACK | TCP_FIN, true);
    expect(s).toBe(FlowState.TIME_WAIT);
    expect(isReusable(s)).toBe(true);
    expect(nextState(s, FIN_FROM_CLIENT | FIN_FROM_SERVER, TCP_ACK, true)).toBe(
      FlowState.TIME_WAIT,
    );
  });

  it('goes to RESET on a RST from either side, and stays there', () => {
    expect(nextState(FlowState.ESTABLISHED, 0, TCP_RST, false)).toBe(FlowState.RESET);
    expect(nextState(FlowState.SYN_SENT, 0, TCP_RST | TCP_ACK, true)).toBe(FlowState.RESET);
    expect(nextState(FlowState.RESET, 0, TCP_ACK | TCP_FIN, true)).toBe(FlowState.RESET);
    expect(isReusable(FlowState.ESTABLISHED)).toBe(false);
  });
});
