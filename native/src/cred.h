/*
 * Who is at the other end of a unix socket, and user and group names, for the
 * control socket's access decisions (src/control/access.ts). Registered by addon.c:
 *
 *   peerCred(fd) -> { pid, uid, gid, groups: number[] }
 *       SO_PEERCRED (pid, uid, gid as the kernel recorded them when the peer
 *       called connect(), in the daemon's namespaces) and SO_PEERGROUPS (the
 *       peer's supplementary groups at that moment). Throws an Error with code
 *       ERR_PEERCRED and errno when the kernel refuses.
 *   lookupUser(name) -> uid | null       getpwnam_r (NSS: files, LDAP, ...)
 *   lookupGroup(name) -> gid | null      getgrnam_r
 *   userName(uid) -> name | null         getpwuid_r (for messages)
 *   groupName(gid) -> name | null        getgrgid_r
 *
 * Control plane only: once per control connection, once per name at (re)load.
 */
#ifndef VPM_CRED_H
#define VPM_CRED_H

#include <node_api.h>

napi_value vpm_js_peer_cred(napi_env env, napi_callback_info info);
napi_value vpm_js_lookup_user(napi_env env, napi_callback_info info);
napi_value vpm_js_lookup_group(napi_env env, napi_callback_info info);
napi_value vpm_js_user_name(napi_env env, napi_callback_info info);
napi_value vpm_js_group_name(napi_env env, napi_callback_info info);

#endif
