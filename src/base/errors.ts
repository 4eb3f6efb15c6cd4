/**
 * vpm's errors: one base class, one union of codes.
 *
 * Every error vpm raises for a caller or a user to handle is a subclass of
 * `VpmError` and carries a stable `code` from ERROR_CODES; each subclass narrows
 * `code` to its own subset (`class TunError extends VpmError<TunErrorCode>`), so
 * a code that is not listed here does not compile. docs/errors.md lists the same
 * codes, and test/base/errors.test.ts checks both directions (every code here is
 * in the docs' table, every code there is here) and that every quoted `ERR_...`
 * in src/, scripts/ and native/src/ is here: a new code cannot be added without
 * listing and documenting it.
 *
 * Codes are part of the interface (scripts, the control protocol and the
 * preload library match on them), so they never change once released; a message
 * may be reworded, a code may not.
 *
 * Not here: Node's own codes. The addon's argument checks throw TypeError /
 * RangeError with ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE, as Node's own
 * functions do; those are Node's vocabulary for a caller's bug, not vpm errors.
 * Internal invariants (a bug, e.g. a bad enum at module load) throw plain Error
 * or RangeError: there is nothing for a caller to match on.
 *
 * A code may be shared by several classes when it means the same thing to the
 * user: ERR_PERMISSION (needs root) is raised by the CLI, the demo and the
 * control client; ERR_UNKNOWN_AID by the registry and by `vpm exec`.
 */

export const ERROR_CODES = [
  // CLI (UsageError, CliError)
  'ERR_USAGE',
  'ERR_PERMISSION',
  'ERR_STOP_TIMEOUT',
  // config (ConfigError, JsonSyntaxError)
  'ERR_CONFIG_READ',
  'ERR_CONFIG_PARSE',
  'ERR_CONFIG_INVALID',
  // host set-up (HostError)
  'ERR_ALREADY_RUNNING',
  'ERR_HOST_TOOL',
  'ERR_HOST_COMMAND',
  'ERR_HOST_SYSCTL',
  'ERR_HOST_STATE',
  'ERR_HOST_STALE',
  'ERR_TUN_EXISTS',
  // the state files that outlive a daemon (native statemap.c)
  'ERR_STATE_MAP',
  // the native addon's loader (NativeError)
  'ERR_NATIVE_NOT_BUILT',
  // TUN (TunError; the addon throws the same codes, src/tun/errors.ts converts)
  'ERR_TUN_NO_DEVICE',
  'ERR_TUN_PERMISSION',
  'ERR_TUN_BUSY',
  'ERR_TUN_NAME',
  'ERR_TUN_OPTION',
  'ERR_TUN_OPEN',
  'ERR_TUN_LINK',
  'ERR_TUN_CLOSED',
  'ERR_TUN_STARTED',
  'ERR_TUN_IO',
  // handing the TUN's fd to another process (HandoverError, src/tun/handover.ts; native/src/handover.c)
  'ERR_TUN_ADOPT',
  'ERR_HANDOVER_TIMEOUT',
  'ERR_HANDOVER_NO_LISTENER',
  'ERR_HANDOVER_PEER',
  'ERR_HANDOVER_PROTOCOL',
  'ERR_HANDOVER_IO',
  // control socket: client (ControlError) and server (error answers)
  'ERR_NOT_RUNNING',
  'ERR_CONTROL_TIMEOUT',
  'ERR_CONTROL_IO',
  'ERR_CONTROL_SOCKET',
  'ERR_CONTROL_BAD_REQUEST',
  'ERR_CONTROL_VERSION',
  'ERR_CONTROL_UNKNOWN_COMMAND',
  // control socket access (src/control/access.ts)
  'ERR_CONTROL_DENIED',
  'ERR_AID_DENIED',
  'ERR_PID_MISMATCH',
  // the native addon's SO_PEERCRED (native/src/cred.c; the control server treats the caller as unknown)
  'ERR_PEERCRED',
  'ERR_INTERNAL',
  // pcap reader (PcapError)
  'ERR_PCAP_TRUNCATED',
  'ERR_PCAP_BAD_MAGIC',
  'ERR_PCAP_PCAPNG',
  'ERR_PCAP_BAD_VERSION',
  'ERR_PCAP_BAD_RECORD',
  // cooperative mode (CoopError)
  'ERR_PEER_UNREACHABLE',
  'ERR_PEER_TIMEOUT',
  'ERR_PEER_DISCONNECTED',
  'ERR_PEER_PROTOCOL',
  'ERR_PEER_BUSY',
  'ERR_PEER_CLOSED',
  'ERR_PEER_LISTEN',
  'ERR_PEER_LISTENING',
  'ERR_PEER_NOT_LISTENING',
  'ERR_COOP_KEY',
  'ERR_COOP_BAD_MESSAGE',
  'ERR_COOP_TOO_LARGE',
  // virtual layer (RegistryError, PoolError)
  'ERR_UNKNOWN_AID',
  'ERR_NOT_MULTIPLEXED',
  'ERR_BIND_ADDRESS',
  'ERR_NO_POOL',
  'ERR_PORTS_EXHAUSTED',
  'ERR_RELEASED',
  'ERR_POOL_CLOSED',
  'ERR_POOL_RELEASE',
  'ERR_POOL_RESTORE',
  // vpm exec (ExecError, StartError)
  'ERR_PRELOAD_PATH',
  'ERR_PRELOAD_MISSING',
  'ERR_NOT_FOUND',
  'ERR_NOT_EXECUTABLE',
  'ERR_EXEC',
  // vpm dump (CaptureError, FilterError, DumpError)
  'ERR_CAPTURE_NO_DEVICE',
  'ERR_CAPTURE_PERMISSION',
  'ERR_CAPTURE_FILTER',
  'ERR_CAPTURE_DEVICE',
  'ERR_DUMP_FILTER',
  'ERR_DUMP',
  // vpm demo and its network-namespace lab (DemoError, LabError)
  'ERR_DEMO_NOT_READY',
  'ERR_LAB_COMMAND',
  'ERR_LAB_CLEANUP',
  // Repr parse/emit (WireError)
  'ERR_IP_VERSION',
  'ERR_CHECKSUM',
  'ERR_TCP_DATA_OFFSET',
  'ERR_TCP_OPTIONS',
  'ERR_UDP_LENGTH',
  'ERR_TRUNCATED',
  'ERR_IPV6_ADDR',
  // the benchmarks' command lines (scripts/bench: UsageError)
  'ERR_BENCH_USAGE',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

const CODES: ReadonlySet<string> = new Set(ERROR_CODES);

/** Whether `s` is one of vpm's codes (for codes that arrive as strings). */
export function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === 'string' && CODES.has(s);
}

/**
 * The base of every vpm error. `name` is the subclass's name (`TunError`), so a
 * log line or a stack says which layer raised it; `cause` (ErrorOptions) keeps
 * the error it wraps, if any. Subclasses add their own fields (`errno`,
 * `problems`, `exitCode`) and narrow `C` to their codes.
 */
export abstract class VpmError<C extends ErrorCode = ErrorCode> extends Error {
  readonly code: C;

  constructor(code: C, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}
