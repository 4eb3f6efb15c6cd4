import { describe, expect, it } from 'vitest';
import { enumNames } from '../../src/base/enum.js';
import { DROP_NAMES, Drop } from '../../src/datapath/counters.js';
import { FlowState, STATE_NAMES } from '../../src/flow/state.js';
import { CHECK_NAMES, Check } from '../../src/wire/parse.js';

describe('enumNames', () => {
  it('indexes the lower-cased keys by value, whatever the key order', () => {
    expect(enumNames({ B_TWO: 1, A_ONE: 0, C: 2 })).toEqual(['a_one', 'b_two', 'c']);
  });

  it.each([
    [{ A: 0, B: 2 }, /B = 2/],
    [{ A: 0, B: 0 }, /B = 0/],
    [{ A: 1 }, /A = 1/],
    [{ A: 0.5 }, /A = 0.5/],
  ])('refuses values that are not 0..n-1 (%j)', (e, msg) => {
    expect(() => enumNames(e)).toThrow(msg);
  });
});

describe('the name tables of the data plane', () => {
  it('STATE_NAMES names every flow state at its code', () => {
    expect(STATE_NAMES[FlowState.FREE]).toBe('free');
    expect(STATE_NAMES[FlowState.SYN_SENT]).toBe('syn_sent');
    expect(STATE_NAMES[FlowState.RESET]).toBe('reset');
    expect(STATE_NAMES.length).toBe(Object.keys(FlowState).length);
  });

  it('DROP_NAMES keeps the parser reasons at their Check numbers, then the pipeline reasons', () => {
    for (const [k, v] of Object.entries(Check)) {
      expect(Drop[k as keyof typeof Check]).toBe(v);
      expect(DROP_NAMES[v]).toBe(CHECK_NAMES[v]);
    }
    expect(DROP_NAMES[Drop.NO_FLOW]).toBe('no_flow');
    expect(DROP_NAMES[Drop.REFUSED_NO_SERVICE]).toBe('refused_no_service');
    expect(DROP_NAMES.length).toBe(Object.keys(Drop).length);
  });
});
