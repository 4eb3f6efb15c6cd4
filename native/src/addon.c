/*
 * N-API entry points of the vpm native addon.
 *
 * Checksum (the benchmark's physical reference):
 *   sum16(buf, off, len, initial) -> number
 *   sum16Batch(buf, offsets: Uint32Array, lengths: Uint32Array, count, out: Uint32Array)
 *       sums `count` regions of one buffer in one call, writing each sum to out[i].
 *
 * Worker threads. NAPI_MODULE registers by symbol (napi_register_module_v1), so
 * init() runs once per env that loads the addon: the main thread and every
 * worker_thread, each with its own exports. No file here keeps mutable state
 * outside the objects it hands to one env (the only statics are constant tables
 * and type tags); every handle that holds a resource (TUN: tun_napi.c, capture:
 * capture.c) registers an async env cleanup hook that closes it and keeps the env
 * alive until its uv handle's close callback has run, so worker.terminate() while
 * a handle polls neither leaks the fd nor leaves a uv handle on a closing loop.
 * Buffers (tunBuffers, stateMap) are external ArrayBuffers: Node runs their
 * finalizers at env teardown. Everything else is a plain synchronous call.
 *
 * Every argument is checked; a bad one throws a TypeError/RangeError naming it
 * (these are control-plane calls; the data plane passes preallocated arrays).
 */
#include <node_api.h>
#include <stdio.h>
#include <string.h>

#include "checksum.h"
#include "capture.h"
#include "cred.h"
#include "statemap.h"
#include "handover.h"
#include "tun_napi.h"

#define THROW(env, kind, ...)                                   \
  do {                                                          \
    char msg_[256];                                             \
    snprintf(msg_, sizeof msg_, __VA_ARGS__);                   \
    napi_throw_##kind((env), NULL, msg_);                       \
    return NULL;                                                \
  } while (0)

static int get_u32(napi_env env, napi_value v, uint32_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return 0;
  double d;
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) return 0;
  *out = (uint32_t)d;
  return 1;
}

static int get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  if (!is_ta) return 0;
  napi_typedarray_type type;
  size_t length;
  void *ptr;
  napi_value ab;
  size_t boff;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, &ab, &boff) != napi_ok) return 0;
  if (type != napi_uint8_array && type != napi_uint8_clamped_array) return 0;
  *data = ptr;
  *len = length;
  return 1;
}

static int get_u32_array(napi_env env, napi_value v, uint32_t **data, size_t *len) {
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  if (!is_ta) return 0;
  napi_typedarray_type type;
  void *ptr;
  napi_value ab;
  size_t boff;
  if (napi_get_typedarray_info(env, v, &type, len, &ptr, &ab, &boff) != napi_ok) return 0;
  if (type != napi_uint32_array) return 0;
  *data = ptr;
  return 1;
}

static napi_value js_sum16(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *data;
  size_t blen;
  uint32_t off, len, initial = 0;
  if (argc < 3) THROW(env, type_error, "sum16(buf, off, len[, initial]): expected at least 3 arguments");
  if (!get_bytes(env, argv[0], &data, &blen)) THROW(env, type_error, "sum16: buf must be a Uint8Array/Buffer");
  if (!get_u32(env, argv[1], &off)) THROW(env, type_error, "sum16: off must be a non-negative integer");
  if (!get_u32(env, argv[2], &len)) THROW(env, type_error, "sum16: len must be a non-negative integer");
  if (argc > 3 && !get_u32(env, argv[3], &initial)) THROW(env, type_error, "sum16: initial must be a non-negative integer");
  if ((uint64_t)off + len > blen) THROW(env, range_error, "sum16: off %u + len %u beyond buffer of %zu bytes", off, len, blen);
  napi_value r;
  napi_create_uint32(env, vpm_sum16(data + off, len, initial), &r);
  return r;
}

static napi_value js_sum16_batch(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint8_t *data;
  size_t blen, noffs, nlens, nout;
  uint32_t *offs, *lens, *out, count;
  if (argc < 5) THROW(env, type_error, "sum16Batch(buf, offsets, lengths, count, out): expected 5 arguments");
  if (!get_bytes(env, argv[0], &data, &blen)) THROW(env, type_error, "sum16Batch: buf must be a Uint8Array/Buffer");
  if (!get_u32_array(env, argv[1], &offs, &noffs)) THROW(env, type_error, "sum16Batch: offsets must be a Uint32Array");
  if (!get_u32_array(env, argv[2], &lens, &nlens)) THROW(env, type_error, "sum16Batch: lengths must be a Uint32Array");
  if (!get_u32(env, argv[3], &count)) THROW(env, type_error, "sum16Batch: count must be a non-negative integer");
  if (!get_u32_array(env, argv[4], &out, &nout)) THROW(env, type_error, "sum16Batch: out must be a Uint32Array");
  if (count > noffs || count > nlens || count > nout) THROW(env, range_error, "sum16Batch: count %u exceeds an array's length", count);
  for (uint32_t i = 0; i < count; i++) {
    if ((uint64_t)offs[i] + lens[i] > blen) THROW(env, range_error, "sum16Batch: region %u (off %u len %u) beyond buffer of %zu bytes", i, offs[i], lens[i], blen);
  }
  for (uint32_t i = 0; i < count; i++) out[i] = vpm_sum16(data + offs[i], lens[i], 0);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"sum16", NULL, js_sum16, NULL, NULL, NULL, napi_default, NULL},
      {"sum16Batch", NULL, js_sum16_batch, NULL, NULL, NULL, napi_default, NULL},
      /* TUN device (tun_napi.c over tun_dev.c) */
      {"tunOpen", NULL, vpm_js_tun_open, NULL, NULL, NULL, napi_default, NULL},
      {"tunSetMtu", NULL, vpm_js_tun_set_mtu, NULL, NULL, NULL, napi_default, NULL},
      {"tunSetTxQueueLen", NULL, vpm_js_tun_set_txqueuelen, NULL, NULL, NULL, napi_default, NULL},
      {"tunSetUp", NULL, vpm_js_tun_set_up, NULL, NULL, NULL, napi_default, NULL},
      {"tunBuffers", NULL, vpm_js_tun_buffers, NULL, NULL, NULL, napi_default, NULL},
      {"tunStart", NULL, vpm_js_tun_start, NULL, NULL, NULL, napi_default, NULL},
      {"tunWriteTx", NULL, vpm_js_tun_write_tx, NULL, NULL, NULL, napi_default, NULL},
      {"tunStop", NULL, vpm_js_tun_stop, NULL, NULL, NULL, napi_default, NULL},
      {"tunWriteBatch", NULL, vpm_js_tun_write_batch, NULL, NULL, NULL, napi_default, NULL},
      {"tunClose", NULL, vpm_js_tun_close, NULL, NULL, NULL, napi_default, NULL},
      {"tunStats", NULL, vpm_js_tun_stats, NULL, NULL, NULL, napi_default, NULL},
      {"tunSetOffload", NULL, vpm_js_tun_set_offload, NULL, NULL, NULL, napi_default, NULL},
      {"tunSetPersist", NULL, vpm_js_tun_set_persist, NULL, NULL, NULL, napi_default, NULL},
      /* File-backed shared mappings for the state that outlives a crash (statemap.c) */
      {"stateMap", NULL, vpm_js_state_map, NULL, NULL, NULL, napi_default, NULL},
      {"tunFd", NULL, vpm_js_tun_fd, NULL, NULL, NULL, napi_default, NULL},
      {"tunAdopt", NULL, vpm_js_tun_adopt, NULL, NULL, NULL, napi_default, NULL},
      {"tunDetach", NULL, vpm_js_tun_detach, NULL, NULL, NULL, napi_default, NULL},
      /* Handing the TUN's fd to another process (handover.c) */
      {"handoverListen", NULL, vpm_js_handover_listen, NULL, NULL, NULL, napi_default, NULL},
      {"handoverReceive", NULL, vpm_js_handover_receive, NULL, NULL, NULL, napi_default, NULL},
      {"handoverSend", NULL, vpm_js_handover_send, NULL, NULL, NULL, napi_default, NULL},
      {"closeFd", NULL, vpm_js_close_fd, NULL, NULL, NULL, napi_default, NULL},
      /* Live capture for vpm dump (capture.c, libpcap) */
      {"capOpen", NULL, vpm_js_cap_open, NULL, NULL, NULL, napi_default, NULL},
      {"capStart", NULL, vpm_js_cap_start, NULL, NULL, NULL, napi_default, NULL},
      {"capRead", NULL, vpm_js_cap_read, NULL, NULL, NULL, napi_default, NULL},
      {"capStats", NULL, vpm_js_cap_stats, NULL, NULL, NULL, napi_default, NULL},
      {"capClose", NULL, vpm_js_cap_close, NULL, NULL, NULL, napi_default, NULL},
      {"capDevices", NULL, vpm_js_cap_devices, NULL, NULL, NULL, napi_default, NULL},
      /* Control socket peers and user/group names (cred.c) */
      {"peerCred", NULL, vpm_js_peer_cred, NULL, NULL, NULL, napi_default, NULL},
      {"lookupUser", NULL, vpm_js_lookup_user, NULL, NULL, NULL, napi_default, NULL},
      {"lookupGroup", NULL, vpm_js_lookup_group, NULL, NULL, NULL, napi_default, NULL},
      {"userName", NULL, vpm_js_user_name, NULL, NULL, NULL, napi_default, NULL},
      {"groupName", NULL, vpm_js_group_name, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
