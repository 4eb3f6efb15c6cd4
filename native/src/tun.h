/*
 * TUN device entry points of the vpm native addon (see tun.c for the theory of
 * operation). Registered by addon.c:
 *
 *   tunOpen({ name?, multiQueue?, vnetHdr? }) -> handle { name }
 *   tunSetMtu(name, mtu) / tunSetTxQueueLen(name, len) / tunSetUp(name, up)
 *   tunStart(handle, rxBuf, slotSize, offsets, lengths, onBatch[, onError])
 *   tunStop(handle)
 *   tunWriteBatch(handle, buf, offsets, lengths, count) -> packets handled
 *   tunClose(handle)
 *   tunStats(handle) -> { counters }
 */
#ifndef VPM_TUN_H
#define VPM_TUN_H

#include <node_api.h>

napi_value vpm_js_tun_open(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_mtu(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_txqueuelen(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_set_up(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_start(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_stop(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_write_batch(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_close(napi_env env, napi_callback_info info);
napi_value vpm_js_tun_stats(napi_env env, napi_callback_info info);

#endif
