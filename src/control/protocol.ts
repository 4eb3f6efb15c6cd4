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
 * `v` is the protocol version; a request with another major version is refused
 * with ERR_CONTROL_VERSION. A line longer than MAX_LINE bytes, invalid JSON or a
 * request without a string `cmd` is refused with ERR_CONTROL_BAD_REQUEST and the
 * connection stays usable. Several requests may be in flight; responses carry the
 * request's id. docs/control-protocol.md lists the commands.
 */

export const PROTOCOL_VERSION = 1;
export const MAX_LINE = 64 * 1024;

export interface ControlRequest {
  v: number;
  id: number | string;
  cmd: string;
  args?: Record<string, unknown>;
  /** No response wanted. */
  oneway?: boolean;
}

export interface ControlErrorBody {
  code: string;
  message: string;
}

export type ControlResponse =
  | { v: number; id: number | string | null; ok: true; result: unknown }
  | { v: number; id: number | string | null; ok: false; error: ControlErrorBody };

export class ControlError extends Error {
  readonly code: string;
  readonly exitCode: number;
  constructor(code: string, message: string, exitCode = 1) {
    super(message);
    this.name = 'ControlError';
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** Validate one parsed request line; returns an error body or null. */
export function checkRequest(x: unknown): ControlErrorBody | null {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) {
    return { code: 'ERR_CONTROL_BAD_REQUEST', message: 'request must be a JSON object' };
  }
  const r = x as Partial<ControlRequest>;
  if (r.v !== PROTOCOL_VERSION) {
    return {
      code: 'ERR_CONTROL_VERSION',
      message: `protocol version ${JSON.stringify(r.v)} not supported (want ${PROTOCOL_VERSION})`,
    };
  }
  if (typeof r.cmd !== 'string' || r.cmd.length === 0 || r.cmd.length > 64) {
    return {
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: `"cmd" must be a non-empty string, got ${JSON.stringify(r.cmd)}`,
    };
  }
  if (typeof r.id !== 'number' && typeof r.id !== 'string') {
    return {
      code: 'ERR_CONTROL_BAD_REQUEST',
      message: `"id" must be a number or string, got ${JSON.stringify(r.id)}`,
    };
  }
  if (
    r.args !== undefined &&
    (typeof r.args !== 'object' || r.args === null || Array.isArray(r.args))
  ) {
    return { code: 'ERR_CONTROL_BAD_REQUEST', message: '"args" must be an object' };
  }
  return null;
}
