/*
 * File-backed shared mappings (statemap.c): the memory of the state that must
 * outlive the daemon process (the flow table's records, src/state/flow-file.ts).
 */
#ifndef VPM_STATEMAP_H
#define VPM_STATEMAP_H

#include <node_api.h>

/* stateMap(path, bytes) -> ArrayBuffer over a new MAP_SHARED mapping of `path`. */
napi_value vpm_js_state_map(napi_env env, napi_callback_info info);

#endif
