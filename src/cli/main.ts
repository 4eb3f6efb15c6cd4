#!/usr/bin/env node
/** The `vpm` executable: runs the command line (program.ts) on process.argv. */

import { runCli } from './program.js';

// A reader that goes away (`vpm flows | head`) ends the command quietly, unless
// the command handles it itself (vpm dump reports what it captured first).
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (process.stdout.listenerCount('error') > 1) return;
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

runCli(process.argv).then((code) => {
  process.exitCode = code;
});
