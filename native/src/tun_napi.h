/*
 * TUN device entry points of the vpm native addon (see tun_napi.c for the theory of
 * operation; tun_dev.c does the device work). Registered by addon.c:
 *
 *   tunOpen({ name?, multiQueue?, vnetHdr?, offload? }) -> handle { name, multiQueue, vnetHdr, offload }
 *   tunSetOffload(handle, mask)
 *   tunSetMtu(name, mtu) / tunSetTxQueueLen(name, len) / tunSetUp(name, up)
 *   tunBuffers(handle, slotSize, batch) -> ArrayBuffer (rx slots, rx/tx offsets, lengths, errnos)
 *   tunStart(handle, onBatch[, onError])
 *   tunWriteTx(handle, count) -> n + 65536 * refused (from the rx buffer, per the tx arrays)
 *   tunStop(handle)
 *   tunWriteBatch(handle, buf, offsets, lengths, count[, errnos]) -> n + 65536 * refused
 *   tunClose(handle)
 *   tunStats(handle) -> { counters }
 *   tunFd(handle) -> fd (for handoverSend, handover.c)
 *   tunDetach(handle) -> fd, given up without closing it (a queue fd for a worker thread)
 *   tunAdopt({ fd, vnetHdr, offload, multiQueue? }) -> handle, over an fd from another process
 */
#ifndef VPM_TUN_H
#define VPM_TUN_H

#include <node_api.h>

napi_value vpm_js_tun_open(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_mtu(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_txqueuelen(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_up(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_buffers(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_start(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_write_tx(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_stop(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_write_batch(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_offload(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_persist(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_close(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_stats(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_fd(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_adopt(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_detach(napi_env env, napi_callback_info info);

#endif
