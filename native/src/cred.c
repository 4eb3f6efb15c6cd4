/* Peer credentials of a unix socket, and user/group names (see cred.h). */
#define _GNU_SOURCE
#include "cred.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

#define MAX_GROUPS 65536

static napi_value throw_errno(napi_env env, const char *what, int e) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
  napi_value err, code, m, en;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &err);
  napi_create_string_utf8(env, "ERR_PEERCRED", NAPI_AUTO_LENGTH, &code);
  napi_set_named_property(env, err, "code", code);
  napi_create_int32(env, e, &en);
  napi_set_named_property(env, err, "errno", en);
  napi_throw(env, err);
  return NULL;
}

static int arg_int(napi_env env, napi_callback_info info, int64_t *out) {
  size_t argc = 1;
  napi_value argv[1];
  napi_valuetype t;
  double d;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_number) return 0;
  napi_get_value_double(env, argv[0], &d);
  if (!(d >= 0 && d <= 4294967295.0) || d != (double)(int64_t)d) return 0;
  *out = (int64_t)d;
  return 1;
}

/* The first argument as a NUL-terminated string of at most 255 bytes. */
static int arg_name(napi_env env, napi_callback_info info, char *buf, size_t cap) {
  size_t argc = 1, len = 0;
  napi_value argv[1];
  napi_valuetype t;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_string) return 0;
  if (napi_get_value_string_utf8(env, argv[0], buf, cap, &len) != napi_ok) return 0;
  return len > 0 && len < cap - 1 && strlen(buf) == len;
}

napi_value vpm_js_peer_cred(napi_env env, napi_callback_info info) {
  int64_t fd;
  if (!arg_int(env, info, &fd) || fd > 0x7fffffff) {
    napi_throw_type_error(env, NULL, "peerCred(fd): fd must be a non-negative integer");
    return NULL;
  }
  struct ucred uc;
  socklen_t l = sizeof uc;
  if (getsockopt((int)fd, SOL_SOCKET, SO_PEERCRED, &uc, &l) != 0)
    return throw_errno(env, "getsockopt(SO_PEERCRED)", errno);

  napi_value out, v, arr;
  napi_create_object(env, &out);
  napi_create_int32(env, uc.pid, &v);
  napi_set_named_property(env, out, "pid", v);
  napi_create_uint32(env, uc.uid, &v);
  napi_set_named_property(env, out, "uid", v);
  napi_create_uint32(env, uc.gid, &v);
  napi_set_named_property(env, out, "gid", v);

  /* Supplementary groups (Linux 4.13+); an older kernel: none known. */
  gid_t small[64];
  gid_t *groups = small;
  socklen_t gl = sizeof small;
  int n = 0;
  if (getsockopt((int)fd, SOL_SOCKET, SO_PEERGROUPS, groups, &gl) == 0) {
    n = (int)(gl / sizeof(gid_t));
  } else if (errno == ERANGE && gl <= MAX_GROUPS * sizeof(gid_t)) {
    groups = malloc(gl);
    if (groups == NULL) return throw_errno(env, "peerCred", ENOMEM);
    if (getsockopt((int)fd, SOL_SOCKET, SO_PEERGROUPS, groups, &gl) == 0)
      n = (int)(gl / sizeof(gid_t));
  }
  napi_create_array_with_length(env, (size_t)n, &arr);
  for (int i = 0; i < n; i++) {
    napi_create_uint32(env, groups[i], &v);
    napi_set_element(env, arr, (uint32_t)i, v);
  }
  if (groups != small) free(groups);
  napi_set_named_property(env, out, "groups", arr);
  return out;
}

napi_value vpm_js_lookup_user(napi_env env, napi_callback_info info) {
  char name[256], buf[16384];
  struct passwd pw, *res = NULL;
  napi_value v;
  if (!arg_name(env, info, name, sizeof name)) {
    napi_throw_type_error(env, NULL, "lookupUser(name): name must be a non-empty string");
    return NULL;
  }
  if (getpwnam_r(name, &pw, buf, sizeof buf, &res) != 0 || res == NULL) {
    napi_get_null(env, &v);
    return v;
  }
  napi_create_uint32(env, pw.pw_uid, &v);
  return v;
}

napi_value vpm_js_lookup_group(napi_env env, napi_callback_info info) {
  char name[256], buf[65536];
  struct group gr, *res = NULL;
  napi_value v;
  if (!arg_name(env, info, name, sizeof name)) {
    napi_throw_type_error(env, NULL, "lookupGroup(name): name must be a non-empty string");
    return NULL;
  }
  if (getgrnam_r(name, &gr, buf, sizeof buf, &res) != 0 || res == NULL) {
    napi_get_null(env, &v);
    return v;
  }
  napi_create_uint32(env, gr.gr_gid, &v);
  return v;
}

napi_value vpm_js_user_name(napi_env env, napi_callback_info info) {
  int64_t id;
  char buf[16384];
  struct passwd pw, *res = NULL;
  napi_value v;
  if (!arg_int(env, info, &id)) {
    napi_throw_type_error(env, NULL, "userName(uid): uid must be a non-negative integer");
    return NULL;
  }
  if (getpwuid_r((uid_t)id, &pw, buf, sizeof buf, &res) != 0 || res == NULL) {
    napi_get_null(env, &v);
    return v;
  }
  napi_create_string_utf8(env, pw.pw_name, NAPI_AUTO_LENGTH, &v);
  return v;
}

napi_value vpm_js_group_name(napi_env env, napi_callback_info info) {
  int64_t id;
  char buf[65536];
  struct group gr, *res = NULL;
  napi_value v;
  if (!arg_int(env, info, &id)) {
    napi_throw_type_error(env, NULL, "groupName(gid): gid must be a non-negative integer");
    return NULL;
  }
  if (getgrgid_r((gid_t)id, &gr, buf, sizeof buf, &res) != 0 || res == NULL) {
    napi_get_null(env, &v);
    return v;
  }
  napi_create_string_utf8(env, gr.gr_name, NAPI_AUTO_LENGTH, &v);
  return v;
}
