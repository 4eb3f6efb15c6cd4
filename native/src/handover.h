/*
 * Handing a live file descriptor (the TUN device's) from one vpm process to
 * another over a unix socket, with SCM_RIGHTS. Registered by addon.c:
 *
 *   handoverListen(path) -> fd
 *   handoverReceive(listenFd, timeoutMs) -> { fd, meta }
 *   handoverSend(path, fd, meta[, timeoutMs = 5000])
 *   closeFd(fd)
 *
 * The receiver (the new process) listens and blocks in handoverReceive before it
 * serves anything; the sender (the old process) connects, sends, and returns
 * once the receiver has acknowledged: from then on the receiver holds the open
 * file, and the sender may close its copy and exit. See handover.c for the
 * protocol and what each side checks.
 *
 * Errors are Errors with a stable `code`, and `errno`/`syscall` when a system
 * call failed: ERR_HANDOVER_TIMEOUT, ERR_HANDOVER_NO_LISTENER, ERR_HANDOVER_PEER,
 * ERR_HANDOVER_PROTOCOL, ERR_HANDOVER_IO. A bad argument is a TypeError or
 * RangeError (ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE).
 */
#ifndef VPM_HANDOVER_H
#define VPM_HANDOVER_H

#include <node_api.h>

/* The largest payload (UTF-8 JSON text) one handover carries. */
#define VPM_HANDOVER_MAX_META 65536
#define VPM_HANDOVER_DEFAULT_TIMEOUT_MS 5000

napi_value vpm_js_handover_listen(napi_env env, napi_callback_info info);
napi_value vpm_js_handover_receive(napi_env env, napi_callback_info info);
napi_value vpm_js_handover_send(napi_env env, napi_callback_info info);
napi_value vpm_js_close_fd(napi_env env, napi_callback_info info);

#endif
