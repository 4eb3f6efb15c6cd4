/**
 * The control protocol: newline-delimited JSON over a unix stream socket.
 *
 *   request  {"v":1, "id":7, "cmd":"stats", "args":{...}}
 *   response {"v":1, "id":7, "ok":true,  "result":{...}}
 *            {"v":1, "id":7, "ok":false, "error":{"code":"ERR_...", "message":"..."}}
 *
 * A request with `"oneway": true` gets no response at all (the bind library's
 * release and connect reports: the sender never reads).
 *
 * `v` is the protocol version; a request with another version is refused with
 * ERR_CONTROL_VERSION. A line longer than MAX_LINE bytes, invalid JSON, or a
 * request or `args` that its schema (requests.ts) refuses gets
 * ERR_CONTROL_BAD_REQUEST naming the field and the value, and the connection
 * stays usable. Several requests may be in flight; responses carry the request's
 * id. docs/control-protocol.md lists the commands.
 */

import type { JSONSchema } from 'json-schema-to-ts';
import { type ErrorCode, VpmError } from '../base/errors.js';
import { compileSchema, formatPath, type SchemaProblem } from '../config/validator.js';
import {
  COMMANDS,
  type Command,
  type ControlRequest,
  PROTOCOL_VERSION,
  requestSchema,
} from './requests.js';

export { type ControlRequest, PROTOCOL_VERSION } from './requests.js';

export const MAX_LINE = 64 * 1024;

export interface ControlErrorBody {
  code: string;
  message: string;
}

export type ControlResponse =
  | { v: number; id: number | string | null; ok: true; result: unknown }
  | { v: number; id: number | string | null; ok: false; error: ControlErrorBody };

/** The codes the control client and server raise themselves. */
export type ControlErrorCode =
  /** No daemon at the socket (ENOENT, ECONNREFUSED). */
  | 'ERR_NOT_RUNNING'
  /** The socket is root-only (EACCES). */
  | 'ERR_PERMISSION'
  /** No answer within the timeout. */
  | 'ERR_CONTROL_TIMEOUT'
  /** A broken answer, or another socket error. */
  | 'ERR_CONTROL_IO'
  /** The server's socket path is taken by something that is not a socket. */
  | 'ERR_CONTROL_SOCKET';

/**
 * An error of a control request. The client raises its own codes
 * (ControlErrorCode); an error answer of the daemon becomes a ControlError with
 * the daemon's code (a RegistryError's, a ConfigError's, ERR_CONTROL_BAD_REQUEST,
 * ...), so its `code` may be any of vpm's codes.
 */
export class ControlError extends VpmError<ErrorCode> {
  readonly exitCode: number;
  constructor(code: ErrorCode, message: string, exitCode = 1) {
    super(code, message);
    this.exitCode = exitCode;
  }
}

/** `args.vport: "x" is a string, expected an integer; ...` (paths from the request). */
function describe(problems: readonly SchemaProblem[], base: readonly string[]): string {
  return problems
    .map((p) => {
      const path = [...base, ...p.path];
      return path.length === 0 ? p.message : `${formatPath(path)}: ${p.message}`;
    })
    .join('; ');
}

/** Validates one parsed request line (the envelope, not yet its `args`). */
export function checkRequest(
  x: unknown,
): { ok: true; request: ControlRequest } | { ok: false; error: ControlErrorBody } {
  const r = compileSchema(requestSchema).validate(x);
  if (r.ok) return { ok: true, request: r.value };
  if (r.problems.some((p) => p.path[0] === 'v')) {
    const v = (x as { v?: unknown }).v;
    return {
      ok: false,
      error: {
        code: 'ERR_CONTROL_VERSION',
        message: `protocol version ${JSON.stringify(v)} not supported (want ${PROTOCOL_VERSION})`,
      },
    };
  }
  return {
    ok: false,
    error: { code: 'ERR_CONTROL_BAD_REQUEST', message: `bad request: ${describe(r.problems, [])}` },
  };
}

/**
 * Validates a command's `args` against its schema. On success, `args` is a copy
 * with the shape `CommandArgs<cmd>` (the server passes it to the handler).
 */
export function checkArgs(
  cmd: Command,
  args: unknown,
): { ok: true; args: unknown } | { ok: false; error: ControlErrorBody } {
  const r = compileSchema(COMMANDS[cmd] as JSONSchema).validate(args);
  if (r.ok) return { ok: true, args: r.value };
  return {
    ok: false,
    error: {
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: `bad "${cmd}" request: ${describe(r.problems, ['args'])}`,
    },
  };
}
