/*
 * Live capture entry points of the vpm native addon (libpcap; see capture.c for
 * the theory of operation). Registered by addon.c:
 *
 *   capOpen(device, filter, { snaplen?, bufferSize?, timeoutMs? }) -> handle { dlt, linkName }
 *   capStart(handle, onReadable(failed))
 *   capRead(handle, buf: Uint8Array, records: Float64Array) -> count
 *   capStats(handle) -> { received, dropped, ifDropped } | null
 *   capClose(handle)
 *   capDevices() -> string[]
 */
#ifndef VPM_CAPTURE_H
#define VPM_CAPTURE_H

#include <node_api.h>

napi_value vpm_js_cap_open(napi_env env, napi_callback_info info);
napi_value vpm_js_cap_start(napi_env env, napi_callback_info info);
napi_value vpm_js_cap_read(napi_env env, napi_callback_info info);
napi_value vpm_js_cap_stats(napi_env env, napi_callback_info info);
napi_value vpm_js_cap_close(napi_env env, napi_callback_info info);
napi_value vpm_js_cap_devices(napi_env env, napi_callback_info info);

#endif
