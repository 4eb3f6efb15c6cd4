/** Errors from the control-plane side of the wire layer (Repr parse/emit). Never on the data plane. */
export class WireError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'WireError';
    this.code = code;
  }
}
