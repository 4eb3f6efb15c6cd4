import { VpmError } from '../base/errors.js';

export type WireErrorCode =
  | 'ERR_IP_VERSION'
  | 'ERR_CHECKSUM'
  | 'ERR_TCP_DATA_OFFSET'
  | 'ERR_TCP_OPTIONS'
  | 'ERR_UDP_LENGTH'
  | 'ERR_TRUNCATED'
  | 'ERR_IPV6_ADDR';

/** Errors from the control-plane side of the wire layer (Repr parse/emit). Never on the data plane. */
export class WireError extends VpmError<WireErrorCode> {}
