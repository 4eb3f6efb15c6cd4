/**
 * Loads the native addon (native/build/Release/vpm_native.node) built by
 * `npm run build:native`. Works from the TypeScript sources (tests) and from the
 * compiled dist/ tree alike (the package root comes from src/paths.ts).
 */

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { VpmError } from '../base/errors.js';
import { packageRoot } from '../base/paths.js';

/**
 * The addon is missing (not built). Its own errors are plain Errors with an
 * ERR_TUN_* code, which src/tun turns into TunErrors, or Node's TypeError /
 * RangeError for a bad argument.
 */
export class NativeError extends VpmError<'ERR_NATIVE_NOT_BUILT'> {}

/** Counters of one TUN device since it was opened, as tunStats() returns them (src/tun/device.ts calls them TunStats). */
export interface NativeTunStats {
  /** Times the device was found readable. */
  polls: number;
  /** Packets delivered to onBatch. */
  readPackets: number;
  /** onBatch calls; readPackets / readBatches is the mean batch. */
  readBatches: number;
  /** Bursts that filled the whole batch (more may have been waiting). */
  readFullBatches: number;
  /** Bursts that ended because the kernel had no more packets (EAGAIN). */
  readEagain: number;
  /** Reads that failed (the packet was dropped; a fatal one also stops reading). */
  readErrors: number;
  /** Packets that filled a whole slot and so may have been cut: dropped. */
  readTruncated: number;
  /** Reads shorter than the virtio-net header: dropped. */
  readShort: number;
  /** errno of the last failed read, 0 if none. */
  lastReadErrno: number;
  /** write() calls. */
  writeCalls: number;
  /** Packets the kernel accepted. */
  writePackets: number;
  /** Writes that found the queue full (EAGAIN/ENOBUFS); the rest of that batch was not written. */
  writeQueueFull: number;
  /** Packets the kernel refused with another errno (e.g. EINVAL): dropped. */
  writeErrors: number;
  /** errno of the last failed write, 0 if none. */
  lastWriteErrno: number;
}

export interface NativeAddon {
  sum16(buf: Uint8Array, off: number, len: number, initial?: number): number;
  sum16Batch(
    buf: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    count: number,
    out: Uint32Array,
  ): void;

  // TUN device (native/src/tun_napi.c over tun_dev.c; the typed wrapper is src/tun/kernel-tun.ts).
  // Errors carry a stable `code` (ERR_TUN_*), and `errno`/`syscall` when a call failed.
  /**
   * Open /dev/net/tun (IFF_TUN | IFF_NO_PI, O_NONBLOCK | O_CLOEXEC); name may be a
   * pattern like "vpm%d". With vnetHdr (IFF_VNET_HDR, 10-byte little-endian
   * headers) the offloads of `offload` that the kernel accepts are set, without
   * it the mask is set to 0; `offload` of the handle says which.
   */
  tunOpen(opts?: {
    name?: string;
    multiQueue?: boolean;
    vnetHdr?: boolean;
    offload?: number;
    /** TUNSETPERSIST(1) once attached: the device outlives the fd. */
    persist?: boolean;
  }): {
    readonly name: string;
    readonly multiQueue: boolean;
    readonly vnetHdr: boolean;
    readonly offload: number;
    /** The name was a device already before this open (a persistent TUN attached again). */
    readonly existed: boolean;
  };
  /** TUNSETPERSIST: false before the last close deletes the device with it. */
  tunSetPersist(handle: { readonly name: string }, on: boolean): void;
  /**
   * An ArrayBuffer over a new MAP_SHARED mapping of `path` (created with O_EXCL,
   * mode 0600, sized to `bytes`, zero-filled): what is stored in it outlives
   * the process (native/src/statemap.c). Unmapped when garbage collected.
   */
  stateMap(path: string, bytes: number): ArrayBuffer;
  /** TUNSETOFFLOAD with exactly `mask` (nonzero only with vnetHdr). */
  tunSetOffload(handle: { readonly name: string }, mask: number): void;
  tunSetMtu(name: string, mtu: number): void;
  tunSetTxQueueLen(name: string, len: number): void;
  tunSetUp(name: string, up: boolean): void;
  /**
   * The device's buffers, once: one ArrayBuffer (C memory, 64-byte aligned
   * sections) holding `batch` rx slots of `slotSize` bytes, then four arrays of
   * `batch` 32-bit words, each section rounded up to 64 bytes (rx offsets, rx
   * lengths, tx offsets, tx lengths), then 4096 errnos (Int32) for any write.
   */
  tunBuffers(handle: { readonly name: string }, slotSize: number, batch: number): ArrayBuffer;
  /** Read bursts of up to `batch` packets into the device's buffers; one onBatch per burst. */
  tunStart(
    handle: { readonly name: string },
    onBatch: (count: number) => void,
    onError?: (err: Error & { code: string; errno?: number; syscall?: string }) => void,
  ): void;
  /** Like tunWriteBatch, for packets in the rx buffer described by the tx arrays of tunBuffers. */
  tunWriteTx(handle: { readonly name: string }, count: number): number;
  tunStop(handle: { readonly name: string }): void;
  /**
   * Packet i is lengths[i] bytes at offsets[i], its header (with vnetHdr) the 10
   * bytes before. Returns n + 65536 * refused: packets [0, n) were written or
   * refused one by one (errnos[i], 0 when written), [n, count) not tried (queue full).
   */
  tunWriteBatch(
    handle: { readonly name: string },
    buf: Uint8Array,
    offsets: Uint32Array,
    lengths: Uint32Array,
    count: number,
    errnos?: Int32Array,
  ): number;
  tunClose(handle: { readonly name: string }): void;
  /** The device's fd, for handoverSend; ERR_TUN_CLOSED after tunClose. */
  tunFd(handle: { readonly name: string }): number;
  /**
   * Give the fd up without closing it (a queue fd for a worker thread to tunAdopt):
   * the handle stops, leaves this env's loop and is closed from then on.
   */
  tunDetach(handle: { readonly name: string }): number;
  /**
   * A handle like tunOpen's over `fd`, received from another process: refused
   * with ERR_TUN_ADOPT (the fd left open, the caller's) unless it is attached to
   * a TUN in this network namespace with IFF_NO_PI, IFF_VNET_HDR exactly when
   * `vnetHdr` (10-byte little-endian headers) and IFF_MULTI_QUEUE exactly when
   * `multiQueue` (default false). Then made O_NONBLOCK and FD_CLOEXEC, its
   * offload mask set to `offload` again; the handle owns the fd.
   */
  tunAdopt(opts: {
    fd: number;
    vnetHdr: boolean;
    offload: number;
    multiQueue?: boolean;
  }): ReturnType<NativeAddon['tunOpen']>;

  // Handing an fd to another process (native/src/handover.c; the typed wrapper is
  // src/tun/handover.ts). Errors carry a stable `code` (ERR_HANDOVER_*), and
  // `errno`/`syscall` when a call failed.
  /** A unix stream socket listening at `path` (a stale socket file there removed first), mode 0600. */
  handoverListen(path: string): number;
  /**
   * Block (poll) up to `timeoutMs` for one sender on `listenFd`: its uid must be 0
   * or ours; exactly one fd and a UTF-8 payload of at most 64 KiB. Acknowledges,
   * then returns them; the fd is close-on-exec.
   */
  handoverReceive(listenFd: number, timeoutMs: number): { fd: number; meta: string };
  /** Send `fd` and `meta` to the listener at `path`; returns once it acknowledged (default 5000 ms). */
  handoverSend(path: string, fd: number, meta: string, timeoutMs?: number): void;
  /** close(2); ERR_HANDOVER_IO when `fd` is not open. */
  closeFd(fd: number): void;

  // Live capture (native/src/capture.c, libpcap; the typed wrapper is src/inspect/capture.ts).
  // Errors carry a stable `code` (ERR_CAPTURE_*).
  /** Open and activate a capture in the ring's normal mode (TPACKET_V3), non-blocking, filtered. */
  capOpen(
    device: string,
    filter: string,
    opts?: { snaplen?: number; bufferSize?: number; timeoutMs?: number },
  ): { readonly dlt: number; readonly linkName: string };
  /** Poll the capture on the event loop; onReadable once per readiness (then capRead until short). */
  capStart(handle: { readonly dlt: number }, onReadable: (failed: boolean) => void): void;
  /**
   * Copy up to min(records.length / 5, buf.length / snaplen rounded up to 8)
   * packets into buf, back to back (8-byte aligned); record i is records[5i ..
   * 5i + 5): offset, caplen, len, ts seconds, ts microseconds. Returns the count.
   */
  capRead(handle: { readonly dlt: number }, buf: Uint8Array, records: Float64Array): number;
  /** pcap_stats since open, or null when it cannot tell. */
  capStats(handle: {
    readonly dlt: number;
  }): { received: number; dropped: number; ifDropped: number } | null;
  capClose(handle: { readonly dlt: number }): void;
  /** Names of the devices libpcap can open in this network namespace. */
  capDevices(): string[];
  tunStats(handle: { readonly name: string }): NativeTunStats;

  // Control socket peers and names (native/src/cred.c; used by src/control/access.ts).
  /**
   * SO_PEERCRED and SO_PEERGROUPS of the unix socket `fd`: the peer's pid, uid,
   * gid and supplementary groups when it connected, as this process's namespaces
   * see them. Throws an Error with code ERR_PEERCRED and errno.
   */
  peerCred(fd: number): { pid: number; uid: number; gid: number; groups: number[] };
  /** getpwnam_r: the uid of user `name`, or null. */
  lookupUser(name: string): number | null;
  /** getgrnam_r: the gid of group `name`, or null. */
  lookupGroup(name: string): number | null;
  /** getpwuid_r: the name of `uid`, or null. */
  userName(uid: number): string | null;
  /** getgrgid_r: the name of `gid`, or null. */
  groupName(gid: number): string | null;
}

let addon: NativeAddon | null = null;

export function loadNative(): NativeAddon {
  if (addon) return addon;
  const path = join(packageRoot(), 'native', 'build', 'Release', 'vpm_native.node');
  if (!existsSync(path)) {
    throw new NativeError(
      'ERR_NATIVE_NOT_BUILT',
      `native addon not built: ${path} is missing (run: npm run build:native)`,
    );
  }
  addon = createRequire(import.meta.url)(path) as NativeAddon;
  return addon;
}
