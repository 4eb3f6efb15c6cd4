/**
 * The network-namespace lab the integration tests build on. It lives in
 * src/sandbox/netlab.ts because `vpm demo` uses the same code; tests import it
 * from here.
 */
export * from '../../src/sandbox/netlab.js';
