/**
 * Fuzz target: the control protocol's request checking, as the server does it
 * for each line (src/control/server.ts `dispatch`): JSON.parse, `checkRequest`
 * (the envelope), then `checkArgs` for a known command. The input is one request
 * line (a trailing newline is cut). A crash: an exception other than JSON's
 * SyntaxError, an error code other than the two the checks give, a response
 * that cannot be serialized, or accepted arguments that no longer pass their
 * own schema.
 */

import { checkArgs, checkRequest } from '../../../src/control/protocol.js';
import { isCommand } from '../../../src/control/requests.js';

const utf8 = new TextDecoder('utf-8');
const CODES = new Set(['ERR_CONTROL_VERSION', 'ERR_CONTROL_BAD_REQUEST']);

function fail(msg: string): never {
  throw new Error(`control: ${msg}`);
}

export function fuzz(data: Buffer): void {
  let line = utf8.decode(data);
  if (line.endsWith('\n')) line = line.slice(0, -1);
  let req: unknown;
  try {
    req = JSON.parse(line);
  } catch (e) {
    if (e instanceof SyntaxError) return; // the server answers "request is not valid JSON"
    throw e;
  }
  const checked = checkRequest(req);
  if (!checked.ok) {
    if (!CODES.has(checked.error.code)) fail(`unexpected code ${checked.error.code}`);
    JSON.stringify(checked.error);
    return;
  }
  const { cmd } = checked.request;
  if (typeof cmd !== 'string' || cmd.length === 0)
    fail(`accepted a request with cmd ${JSON.stringify(cmd)}`);
  if (!isCommand(cmd)) return; // ERR_CONTROL_UNKNOWN_COMMAND
  const args = checkArgs(cmd, checked.request.args ?? {});
  if (!args.ok) {
    if (args.error.code !== 'ERR_CONTROL_BAD_REQUEST') fail(`unexpected code ${args.error.code}`);
    JSON.stringify(args.error);
    return;
  }
  const again = checkArgs(cmd, JSON.parse(JSON.stringify(args.args)));
  if (!again.ok)
    fail(`"${cmd}" args accepted once, refused after a round trip: ${again.error.message}`);
}
