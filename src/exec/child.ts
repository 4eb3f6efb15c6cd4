/**
 * Run one program the way a shell's `exec` would, as far as Node can: stdio
 * inherited, the usual termination signals passed on, and its end passed
 * through unchanged.
 *
 * Theory of operation. Node cannot replace itself with the program (no
 * execve), so `vpm exec` stays as its parent:
 *   starting  spawn; a program that is not there ends as a shell's would
 *             (127: not found, 126: found but not executable);
 *   running   SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to
 *             vpm are sent on to the program (vpm itself ignores them then;
 *             its listeners are in place before the program starts);
 *   ended     an exit status is vpm's exit status; a death by a signal is
 *             re-raised on vpm itself, with its handlers removed, so that
 *             whoever waits for vpm sees the same signal. Should vpm survive
 *             its own signal (one Node ignores, like SIGPIPE), it exits with
 *             128 + the signal's number, as a shell reports it.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { constants } from 'node:os';
import { VpmError } from '../base/errors.js';

export const FORWARDED_SIGNALS = [
  'SIGINT',
  'SIGTERM',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
] as const satisfies readonly NodeJS.Signals[];

export type ChildEnd = { code: number; signal: null } | { code: null; signal: NodeJS.Signals };

export type StartErrorCode =
  /** No such program (exit status 127). */
  | 'ERR_NOT_FOUND'
  /** Not an executable file (126). */
  | 'ERR_NOT_EXECUTABLE'
  /** spawn() failed for another reason (126). */
  | 'ERR_EXEC';

/** An error with the exit status a shell would use for it (126, 127). */
export class StartError extends VpmError<StartErrorCode> {
  readonly exitCode: number;
  constructor(code: StartErrorCode, message: string, exitCode: number) {
    super(code, message);
    this.exitCode = exitCode;
  }
}

/** Spawn `file args...` and resolve with how it ended; signals are forwarded meanwhile. */
export function runChild(
  file: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<ChildEnd> {
  return new Promise<ChildEnd>((resolve, reject) => {
    // The listeners go in before the program starts: a signal that arrived
    // before them would end vpm (or, SIGUSR1, open Node's inspector) and the
    // program would never see it. One that comes before spawn() has returned
    // is passed on right after. They stay installed, doing nothing, once the
    // program has ended, so that a late signal cannot change vpm's own status.
    let child: ChildProcess | null = null;
    let ended = false;
    const early: NodeJS.Signals[] = [];
    const forward = (sig: NodeJS.Signals): void => {
      if (ended) return;
      if (child === null) {
        early.push(sig);
        return;
      }
      try {
        child.kill(sig);
      } catch {
        // it is already gone; its exit is on the way
      }
    };
    for (const sig of FORWARDED_SIGNALS) process.on(sig, forward);

    child = spawn(file, args, { stdio: 'inherit', env });
    child.once('error', (e: NodeJS.ErrnoException) => {
      ended = true;
      if (e.code === 'ENOENT')
        reject(new StartError('ERR_NOT_FOUND', `${file}: command not found`, 127));
      else if (e.code === 'EACCES')
        reject(
          new StartError(
            'ERR_NOT_EXECUTABLE',
            `${file}: permission denied (not an executable file)`,
            126,
          ),
        );
      else reject(new StartError('ERR_EXEC', `${file}: cannot run it: ${e.message}`, 126));
    });
    child.once('exit', (code, signal) => {
      ended = true;
      if (signal !== null) resolve({ code: null, signal });
      else resolve({ code: code ?? 0, signal: null });
    });
    for (const sig of early.splice(0)) forward(sig);
  });
}

/**
 * End this process the way the child ended. For a signal: remove every
 * listener, raise it on ourselves, and exit with 128 + n should we survive it.
 */
export function endLikeChild(end: ChildEnd): void {
  if (end.signal === null) {
    process.exitCode = end.code;
    return;
  }
  const sig = end.signal;
  process.removeAllListeners(sig);
  const n = constants.signals[sig] ?? 0;
  process.kill(process.pid, sig);
  // The signal is delivered as soon as we return to the event loop; this only
  // runs if it did not end us.
  setTimeout(() => process.exit(128 + n), 200);
}
