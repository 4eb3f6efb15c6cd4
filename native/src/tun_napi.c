/*
 * N-API glue of the TUN device (tun_dev.c does the fd, ioctl, read and write
 * work in plain C): argument marshalling, the JS handle's lifetime, errors with
 * stable codes, and batched non-blocking I/O on Node's own event loop.
 *
 * Theory of operation
 * -------------------
 * A device is a `vpm_tun` owned by a JS handle object (napi_wrap, type-tagged so
 * a foreign object is refused). Its buffers (tunBuffers: the rx slots and the
 * rx/tx offset, length and errno arrays) are one C allocation that JS sees as one
 * external ArrayBuffer, so neither a read burst nor a tunWriteTx looks up or
 * checks a typed array per call (the typed-array introspection showed up at ~4%
 * of the daemon's CPU per 64-byte transaction when JS passed them in). Its fd is O_NONBLOCK: no call here ever blocks,
 * and nothing runs in libuv's thread pool, so process.exit() never waits for a
 * read stuck in a worker thread.
 *
 * States of one device:
 *
 *   open ──start()──► polling ──stop()──► open ──close()──► closed
 *                        │  fatal read/poll error: reading stops, onError
 *                        └──close()─────────────────────────► closed
 *
 *  - open:    fd valid, no uv handle active; writeBatch() works.
 *  - polling: a uv_poll_t on the env's loop watches the fd. Readability (level
 *             triggered) gives one bounded burst: read() into consecutive slots
 *             of the device's rx buffer until EAGAIN or the batch is full, then
 *             ONE JS call onBatch(count). Whatever is left makes
 *             the fd readable again, and the loop comes back to it after other
 *             work: never a loop without bound here. While polling, strong
 *             references keep the rx arrays, the callbacks and the handle alive,
 *             and the active uv handle keeps the process alive.
 *  - closed:  fd closed, poll handle uv_close()d; every call but close() and
 *             stats() refuses with ERR_TUN_CLOSED. close() is idempotent.
 *
 * JS may call stop(), close() or start() from inside onBatch: on_poll touches
 * only the vpm_tun after the call, never the fd or the arrays, and the async
 * context of the running callback is destroyed only once it has returned.
 * Memory is freed when both owners let go: the JS handle (finalizer) and the
 * uv handle (close callback). An async env-cleanup hook closes the device when
 * its env (main thread or worker) is torn down, and lets the loop run the
 * close callback before the env goes away.
 *
 * A JS exception thrown by onBatch/onError is not swallowed: it is taken off
 * the env and raised with napi_fatal_exception, i.e. as an uncaught exception
 * ('uncaughtException' handlers see it; without one, Node prints it and exits).
 */
#define _GNU_SOURCE
#include "tun_napi.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "tun_dev.h"
#include "tun_inspect.h"

enum { POLL_NONE = 0, POLL_INIT, POLL_CLOSING, POLL_CLOSED };

typedef struct {
  napi_env env;
  int fd;
  char name[IFNAMSIZ];
  bool multi_queue;
  uint32_t headroom; /* VPM_VNET_HDR_LEN with IFF_VNET_HDR, else 0 */
  unsigned offload;  /* the TUNSETOFFLOAD mask in effect */

  uv_poll_t poll;
  int poll_state;
  bool polling;
  bool wrapped;     /* the JS handle is alive (not finalized) */
  bool in_callback; /* inside on_poll */

  /* The device's buffers (tunBuffers): rx slots and the rx/tx offset, length and errno
     arrays, in one C allocation that JS sees as one external ArrayBuffer. */
  struct vpm_bufs *bufs;
  uint8_t *rx;
  uint32_t *rx_offsets, *rx_lengths, *tx_offsets, *tx_lengths;
  int32_t *tx_errnos;
  size_t rx_len;

  /* Arguments of the current start(), referenced while polling. */
  napi_ref batch_cb_ref, error_cb_ref, self_ref;
  napi_async_context async;
  napi_async_context active_async; /* the context of the JS call on_poll is making */
  napi_async_context stale_async;  /* released during that call: destroyed after it */
  uint32_t slot, batch;

  napi_async_cleanup_hook_handle cleanup;
  bool cleanup_running;

  vpm_tun_stats st;
} vpm_tun;

/*
 * The buffers of one device. Two owners: the device (until it is freed) and the
 * ArrayBuffer JS holds (until its finalizer runs). Whoever lets go last frees
 * it, so neither a JS view of a closed device nor a device whose ArrayBuffer JS
 * dropped or detached (structuredClone with transfer) ever touches freed memory.
 */
struct vpm_bufs {
  int refs;
  size_t len;
  uint8_t *data;
};

static void bufs_release(struct vpm_bufs *b) {
  if (b && --b->refs == 0) {
    free(b->data);
    free(b);
  }
}

static void on_bufs_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  bufs_release(hint);
}

/* The most packets one write call takes, and so the length of the errno section. */
#define VPM_TUN_MAX_WRITE 4096

/* Random, fixed: marks objects made by tunOpen (napi_check_object_type_tag). */
static const napi_type_tag TUN_TAG = {0x7670d3b1c2a94e17ULL, 0x9f1e0b5d6a3c2e48ULL};

/* ---------- errors ---------- */

/* Throw an Error with a stable `code`, and `errno`/`syscall` when err != 0. */
static void throw_code(napi_env env, const char *code, int err, const char *syscall,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static napi_value make_error(napi_env env, const char *code, int err, const char *syscall,
                             const char *msg) {
  napi_value c, m, e;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &e);
  if (err) {
    napi_value n, s;
    napi_create_int32(env, err, &n);
    napi_set_named_property(env, e, "errno", n);
    napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &s);
    napi_set_named_property(env, e, "syscall", s);
  }
  return e;
}

static void throw_code(napi_env env, const char *code, int err, const char *syscall,
                       const char *fmt, ...) {
  char msg[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw(env, make_error(env, code, err, syscall, msg));
}

#define THROW_TYPE(env, ...)                                    \
  do {                                                          \
    char msg_[256];                                             \
    snprintf(msg_, sizeof msg_, __VA_ARGS__);                   \
    napi_throw_type_error((env), "ERR_INVALID_ARG_TYPE", msg_); \
    return NULL;                                                \
  } while (0)

#define THROW_RANGE(env, ...)                                \
  do {                                                       \
    char msg_[256];                                          \
    snprintf(msg_, sizeof msg_, __VA_ARGS__);                \
    napi_throw_range_error((env), "ERR_OUT_OF_RANGE", msg_); \
    return NULL;                                             \
  } while (0)

/* ---------- argument helpers ---------- */

static bool is_nullish(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && (t == napi_undefined || t == napi_null);
}

static bool is_function(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && t == napi_function;
}

static bool get_u32(napi_env env, napi_value v, uint32_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return false;
  double d;
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) return false;
  *out = (uint32_t)d;
  return true;
}

static bool get_bool(napi_env env, napi_value v, bool *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean) return false;
  return napi_get_value_bool(env, v, out) == napi_ok;
}

static bool get_typed(napi_env env, napi_value v, napi_typedarray_type want, void **data,
                      size_t *len) {
  bool is_ta = false;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return false;
  napi_typedarray_type type;
  napi_value ab;
  size_t boff;
  if (napi_get_typedarray_info(env, v, &type, len, data, &ab, &boff) != napi_ok) return false;
  if (type == napi_uint8_clamped_array && want == napi_uint8_array) return true;
  return type == want;
}

/* Linux's rule (dev_valid_name, __dev_alloc_name), checked here to give a clear error. */
static const char *bad_name_reason(const char *name) {
  if (strlen(name) >= IFNAMSIZ) return "is longer than 15 bytes";
  if (!strcmp(name, ".") || !strcmp(name, "..")) return "is not allowed";
  for (const char *p = name; *p; p++) {
    if (*p == '/' || *p == ':' || isspace((unsigned char)*p))
      return "contains '/', ':' or white space";
  }
  const char *pct = strchr(name, '%');
  if (pct && (pct[1] != 'd' || strchr(pct + 2, '%'))) return "is a pattern with other than one %d";
  return NULL;
}

/* An interface name argument: a string of 1..15 bytes. false after throwing. */
static bool get_ifname(napi_env env, napi_value v, const char *fn, char out[IFNAMSIZ]) {
  napi_valuetype t;
  size_t len = 0;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "interface name must be a string");
    return false;
  }
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  if (len == 0 || len >= IFNAMSIZ) {
    throw_code(env, "ERR_TUN_NAME", 0, "",
               "%s: interface name must be 1 to 15 bytes long (got %zu)", fn, len);
    return false;
  }
  napi_get_value_string_utf8(env, v, out, IFNAMSIZ, &len);
  return true;
}

static vpm_tun *get_tun(napi_env env, napi_value v, const char *fn) {
  napi_valuetype t;
  bool tagged = false;
  void *p = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_object ||
      napi_check_object_type_tag(env, v, &TUN_TAG, &tagged) != napi_ok || !tagged ||
      napi_unwrap(env, v, &p) != napi_ok || p == NULL) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: first argument must be a handle returned by tunOpen()", fn);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
  }
  return p;
}

static vpm_tun *get_open_tun(napi_env env, napi_value v, const char *fn) {
  vpm_tun *t = get_tun(env, v, fn);
  if (t && t->fd < 0) {
    throw_code(env, "ERR_TUN_CLOSED", 0, "", "%s: TUN device %s is closed", fn, t->name);
    return NULL;
  }
  return t;
}

/* ---------- lifetime ---------- */

static void delete_ref(napi_env env, napi_ref *r) {
  if (*r) {
    napi_delete_reference(env, *r);
    *r = NULL;
  }
}

/* Drop what start() referenced. The async context of a JS call in progress lives on until it
 * returns. */
static void release_start_state(vpm_tun *t) {
  napi_env env = t->env;
  delete_ref(env, &t->batch_cb_ref);
  delete_ref(env, &t->error_cb_ref);
  delete_ref(env, &t->self_ref);
  if (t->async) {
    if (t->in_callback && t->async == t->active_async) {
      t->stale_async = t->async;
    } else {
      napi_async_destroy(env, t->async);
    }
    t->async = NULL;
  }
}

static void stop_polling(vpm_tun *t) {
  if (t->polling) {
    uv_poll_stop(&t->poll);
    t->polling = false;
  }
  release_start_state(t);
}

static void on_poll_closed(uv_handle_t *h) {
  vpm_tun *t = h->data;
  t->poll_state = POLL_CLOSED;
  if (t->cleanup_running && t->cleanup) {
    napi_async_cleanup_hook_handle c = t->cleanup;
    t->cleanup = NULL;
    napi_remove_async_cleanup_hook(c);
  }
  if (!t->wrapped) {
    bufs_release(t->bufs);
    free(t);
  }
}

/* close(): stop, uv_close the poll handle (uv_poll_stop has taken the fd out of epoll), close the
 * fd. */
static void close_impl(vpm_tun *t) {
  stop_polling(t);
  if (t->poll_state == POLL_INIT) {
    t->poll_state = POLL_CLOSING;
    uv_close((uv_handle_t *)&t->poll, on_poll_closed);
  }
  if (t->fd >= 0) {
    close(t->fd);
    t->fd = -1;
  }
}

static void on_env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  vpm_tun *t = arg;
  t->cleanup_running = true;
  t->cleanup = handle;
  close_impl(t);
  if (t->poll_state != POLL_CLOSING) {
    t->cleanup = NULL;
    napi_remove_async_cleanup_hook(handle);
  } /* else on_poll_closed removes it, once the loop has run the close callback */
}

static void on_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  vpm_tun *t = data;
  t->wrapped = false;
  close_impl(t);
  if (t->cleanup && !t->cleanup_running) {
    napi_async_cleanup_hook_handle c = t->cleanup;
    t->cleanup = NULL;
    napi_remove_async_cleanup_hook(c);
  }
  if (t->poll_state == POLL_NONE || t->poll_state == POLL_CLOSED) {
    bufs_release(t->bufs);
    free(t);
  }
}

/* ---------- open ---------- */

static napi_value open_error(napi_env env, int err, const char *syscall, const char *name) {
  const char *shown = name[0] ? name : "tun%d";
  switch (err) {
    case ENOENT:
    case ENODEV:
    case ENXIO:
      throw_code(
          env, "ERR_TUN_NO_DEVICE", err, syscall,
          "cannot open TUN device %s: /dev/net/tun is missing or unusable (%s); load the tun "
          "module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)",
          shown, strerror(err));
      break;
    case EPERM:
    case EACCES:
      throw_code(env, "ERR_TUN_PERMISSION", err, syscall,
                 "cannot open TUN device %s: needs CAP_NET_ADMIN (run as root) (%s: %s)", shown,
                 syscall, strerror(err));
      break;
    case EBUSY:
      throw_code(env, "ERR_TUN_BUSY", err, syscall,
                 "cannot open TUN device %s: the name is in use (a TUN without multiQueue that is "
                 "already open) (%s)",
                 shown, strerror(err));
      break;
    case EINVAL:
      if (name[0] && !strchr(name, '%') && if_nametoindex(name) != 0) {
        throw_code(env, "ERR_TUN_BUSY", err, syscall,
                   "cannot open TUN device %s: the name is in use by a device that is not a TUN, "
                   "or by a TUN whose multi-queue setting differs (%s)",
                   shown, strerror(err));
      } else {
        throw_code(env, "ERR_TUN_NAME", err, syscall,
                   "cannot open TUN device \"%s\": the kernel refused the name (%s)", shown,
                   strerror(err));
      }
      break;
    default:
      throw_code(env, "ERR_TUN_OPEN", err, syscall, "cannot open TUN device %s: %s failed: %s",
                 shown, syscall, strerror(err));
  }
  return NULL;
}

static napi_value get_prop(napi_env env, napi_value obj, const char *key) {
  napi_value v = NULL;
  napi_get_named_property(env, obj, key, &v);
  return v;
}

/*
 * The JS handle over an attached, non-blocking TUN fd (tunOpen's, or tunAdopt's).
 * On failure it throws, and closes the fd when `close_on_error`.
 */
static napi_value wrap_tun(napi_env env, int fd, const char *kname, bool mq, bool vnet,
                           unsigned offload, bool existed, const char *fn, bool close_on_error) {
  vpm_tun *t = calloc(1, sizeof *t);
  if (!t) {
    if (close_on_error) close(fd);
    throw_code(env, "ERR_TUN_OPEN", ENOMEM, "calloc", "%s: out of memory", fn);
    return NULL;
  }
  t->env = env;
  t->fd = fd;
  t->multi_queue = mq;
  t->headroom = vnet ? VPM_VNET_HDR_LEN : 0;
  t->offload = offload;
  memcpy(t->name, kname, IFNAMSIZ);
  t->poll.data = t;

  napi_value obj, nm, mqv, vnv, ofv, exv;
  napi_create_object(env, &obj);
  napi_create_string_utf8(env, t->name, NAPI_AUTO_LENGTH, &nm);
  napi_get_boolean(env, mq, &mqv);
  napi_get_boolean(env, vnet, &vnv);
  napi_create_uint32(env, offload, &ofv);
  napi_get_boolean(env, existed, &exv);
  napi_property_descriptor props[] = {
      {"name", NULL, NULL, NULL, NULL, nm, napi_enumerable, NULL},
      {"multiQueue", NULL, NULL, NULL, NULL, mqv, napi_enumerable, NULL},
      {"vnetHdr", NULL, NULL, NULL, NULL, vnv, napi_enumerable, NULL},
      {"offload", NULL, NULL, NULL, NULL, ofv, napi_enumerable, NULL},
      {"existed", NULL, NULL, NULL, NULL, exv, napi_enumerable, NULL},
  };
  napi_define_properties(env, obj, 5, props);
  napi_type_tag_object(env, obj, &TUN_TAG);
  if (napi_wrap(env, obj, t, on_finalize, NULL, NULL) != napi_ok) {
    if (close_on_error) close(fd);
    free(t);
    throw_code(env, "ERR_TUN_OPEN", 0, "", "%s: napi_wrap failed", fn);
    return NULL;
  }
  t->wrapped = true;
  napi_add_async_cleanup_hook(env, on_env_cleanup, t, &t->cleanup);
  return obj;
}

napi_value vpm_js_tun_open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char name[IFNAMSIZ] = "";
  bool mq = false, vnet = false, persist = false;

  if (argc >= 1 && !is_nullish(env, argv[0])) {
    napi_valuetype t;
    napi_typeof(env, argv[0], &t);
    if (t != napi_object) THROW_TYPE(env, "tunOpen(opts): opts must be an object");
    napi_value v = get_prop(env, argv[0], "name");
    if (v && !is_nullish(env, v)) {
      napi_valuetype vt;
      size_t len = 0;
      napi_typeof(env, v, &vt);
      if (vt != napi_string) THROW_TYPE(env, "tunOpen: opts.name must be a string");
      napi_get_value_string_utf8(env, v, NULL, 0, &len);
      if (len >= IFNAMSIZ) {
        throw_code(env, "ERR_TUN_NAME", 0, "",
                   "tunOpen: interface name is %zu bytes long; Linux allows 15", len);
        return NULL;
      }
      napi_get_value_string_utf8(env, v, name, sizeof name, &len);
      const char *why = bad_name_reason(name);
      if (why) {
        throw_code(env, "ERR_TUN_NAME", 0, "", "tunOpen: interface name \"%s\" %s", name, why);
        return NULL;
      }
    }
    v = get_prop(env, argv[0], "multiQueue");
    if (v && !is_nullish(env, v) && !get_bool(env, v, &mq))
      THROW_TYPE(env, "tunOpen: opts.multiQueue must be a boolean");
    v = get_prop(env, argv[0], "vnetHdr");
    if (v && !is_nullish(env, v) && !get_bool(env, v, &vnet))
      THROW_TYPE(env, "tunOpen: opts.vnetHdr must be a boolean");
    v = get_prop(env, argv[0], "persist");
    if (v && !is_nullish(env, v) && !get_bool(env, v, &persist))
      THROW_TYPE(env, "tunOpen: opts.persist must be a boolean");
  }
  uint32_t want = VPM_TUN_F_CSUM | VPM_TUN_F_TSO4 | VPM_TUN_F_TSO6 | VPM_TUN_F_TSO_ECN |
                  VPM_TUN_F_USO4 | VPM_TUN_F_USO6;
  if (argc >= 1 && !is_nullish(env, argv[0])) {
    napi_value v = get_prop(env, argv[0], "offload");
    if (v && !is_nullish(env, v) && (!get_u32(env, v, &want) || want > 0xff))
      THROW_RANGE(env, "tunOpen: opts.offload must be a TUN_F_* mask 0..255");
  }

  char kname[IFNAMSIZ];
  const char *syscall = "";
  /* Whether the name is a device already (a persistent TUN left by a previous vpm): reported as `existed`. */
  bool existed = name[0] != '\0' && strchr(name, '%') == NULL && if_nametoindex(name) != 0;
  int fd = vpm_tun_open(name,
                        (mq ? VPM_TUN_MULTI_QUEUE : 0) | (vnet ? VPM_TUN_VNET_HDR : 0) |
                            (persist ? VPM_TUN_PERSIST : 0),
                        kname, &syscall);
  if (fd < 0) return open_error(env, -fd, syscall, name);
  /* The mask is device-wide and outlives this fd: always set it, to 0 without headers. */
  unsigned offload = 0;
  int rc = vnet ? vpm_tun_negotiate_offload(fd, want, &offload) : vpm_tun_set_offload(fd, 0);
  if (rc < 0) {
    close(fd);
    throw_code(env, "ERR_TUN_OPEN", -rc, "ioctl(TUNSETOFFLOAD)",
               "cannot set offloads 0x%x on TUN device %s: %s", vnet ? want : 0, kname,
               strerror(-rc));
    return NULL;
  }

  return wrap_tun(env, fd, kname, mq, vnet, offload, existed, "tunOpen", true);
}

napi_value vpm_js_tun_set_offload(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) THROW_TYPE(env, "tunSetOffload(handle, mask): expected 2 arguments");
  vpm_tun *t = get_open_tun(env, argv[0], "tunSetOffload");
  if (!t) return NULL;
  uint32_t mask;
  if (!get_u32(env, argv[1], &mask) || mask > 0xff)
    THROW_RANGE(env, "tunSetOffload: mask must be a TUN_F_* mask 0..255");
  if (mask != 0 && t->headroom == 0) {
    throw_code(env, "ERR_TUN_OPTION", 0, "",
               "tunSetOffload: TUN device %s has no virtio-net header; only 0 is possible",
               t->name);
    return NULL;
  }
  int rc = vpm_tun_set_offload(t->fd, mask);
  if (rc < 0) {
    throw_code(env, "ERR_TUN_IO", -rc, "ioctl(TUNSETOFFLOAD)",
               "cannot set offloads 0x%x on TUN device %s: %s", mask, t->name, strerror(-rc));
    return NULL;
  }
  t->offload = mask;
  return NULL;
}

/* tunSetPersist(handle, on): TUNSETPERSIST. Off before the last close deletes the device with it. */
napi_value vpm_js_tun_set_persist(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) THROW_TYPE(env, "tunSetPersist(handle, on): expected 2 arguments");
  vpm_tun *t = get_open_tun(env, argv[0], "tunSetPersist");
  if (!t) return NULL;
  bool on;
  if (!get_bool(env, argv[1], &on)) THROW_TYPE(env, "tunSetPersist: on must be a boolean");
  int rc = vpm_tun_set_persist(t->fd, on);
  if (rc < 0) {
    throw_code(env, "ERR_TUN_IO", -rc, "ioctl(TUNSETPERSIST)",
               "cannot set persistence %d on TUN device %s: %s", on ? 1 : 0, t->name,
               strerror(-rc));
    return NULL;
  }
  return NULL;
}

/* ---------- link settings (socket ioctls by interface name) ---------- */

/* Turn a -errno of tun_dev.c's link calls into an exception. false after throwing. */
static bool link_result(napi_env env, int rc, const char *reqname, const char *what) {
  if (rc == 0) return true;
  int err = -rc;
  if (err == EPERM || err == EACCES) {
    throw_code(env, "ERR_TUN_PERMISSION", err, reqname,
               "%s: needs CAP_NET_ADMIN (run as root) (%s)", what, strerror(err));
  } else {
    throw_code(env, "ERR_TUN_LINK", err, reqname, "%s: %s failed: %s", what, reqname,
               strerror(err));
  }
  return false;
}

napi_value vpm_js_tun_set_mtu(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char name[IFNAMSIZ];
  uint32_t mtu;
  if (argc < 2) THROW_TYPE(env, "tunSetMtu(name, mtu): expected 2 arguments");
  if (!get_ifname(env, argv[0], "tunSetMtu", name)) return NULL;
  if (!get_u32(env, argv[1], &mtu) || mtu > 65535)
    THROW_RANGE(env, "tunSetMtu: mtu must be an integer 0..65535");
  char what[64];
  snprintf(what, sizeof what, "set MTU %u on %s", mtu, name);
  link_result(env, vpm_link_set_mtu(name, mtu), "ioctl(SIOCSIFMTU)", what);
  return NULL;
}

napi_value vpm_js_tun_set_txqueuelen(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char name[IFNAMSIZ];
  uint32_t len;
  if (argc < 2) THROW_TYPE(env, "tunSetTxQueueLen(name, len): expected 2 arguments");
  if (!get_ifname(env, argv[0], "tunSetTxQueueLen", name)) return NULL;
  if (!get_u32(env, argv[1], &len) || len > 0x7fffffff)
    THROW_RANGE(env, "tunSetTxQueueLen: len must be a non-negative 32-bit integer");
  char what[64];
  snprintf(what, sizeof what, "set txqueuelen %u on %s", len, name);
  link_result(env, vpm_link_set_txqueuelen(name, len), "ioctl(SIOCSIFTXQLEN)", what);
  return NULL;
}

napi_value vpm_js_tun_set_up(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char name[IFNAMSIZ];
  bool up;
  if (argc < 2) THROW_TYPE(env, "tunSetUp(name, up): expected 2 arguments");
  if (!get_ifname(env, argv[0], "tunSetUp", name)) return NULL;
  if (!get_bool(env, argv[1], &up)) THROW_TYPE(env, "tunSetUp: up must be a boolean");
  char what[64];
  snprintf(what, sizeof what, "set %s %s", name, up ? "up" : "down");
  link_result(env, vpm_link_set_up(name, up), "ioctl(SIOCSIFFLAGS)", what);
  return NULL;
}

/* ---------- reading: one bounded burst per poll callback ---------- */

static napi_value ref_value(napi_env env, napi_ref r) {
  napi_value v = NULL;
  if (r) napi_get_reference_value(env, r, &v);
  return v;
}

/* Call fn; an exception it throws becomes an uncaught exception (never swallowed). */
static void call_js(vpm_tun *t, napi_async_context ctx, napi_value fn, size_t argc,
                    napi_value *argv) {
  napi_env env = t->env;
  napi_value recv, result;
  napi_get_global(env, &recv); /* napi_make_callback needs an object receiver */
  napi_status s = napi_make_callback(env, ctx, recv, fn, argc, argv, &result);
  if (s != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
    }
  }
}

static void on_poll(uv_poll_t *p, int status, int events) {
  vpm_tun *t = p->data;
  napi_env env = t->env;
  napi_handle_scope scope;
  t->st.polls++;
  if (!t->polling) return;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  t->in_callback = true;

  napi_async_context ctx = t->async;
  t->active_async = ctx; /* kept alive (stale_async) if released before the calls below */
  napi_value on_batch = ref_value(env, t->batch_cb_ref);
  napi_value on_error = ref_value(env, t->error_cb_ref);
  uint32_t n = 0;
  int err = 0;
  const char *syscall = "read";

  if (status < 0) {
    err = -status; /* libuv on Unix: -errno; POLLERR (device gone) arrives as UV_EBADF */
    syscall = "poll";
  } else if (events & UV_READABLE) {
    n = vpm_tun_read_burst(t->fd, t->rx, t->slot, t->batch, t->headroom, t->rx_offsets,
                           t->rx_lengths, &t->st, &err);
  }

  /* Stop first, so that whatever the callbacks do sees a device that is no longer reading. */
  if (err) stop_polling(t);
  if (n > 0 && on_batch) {
    napi_value arg;
    napi_create_uint32(env, n, &arg);
    call_js(t, ctx, on_batch, 1, &arg);
  }
  if (err && t->fd >= 0) {
    char msg[256];
    if (status < 0) /* POLLERR: the kernel detached the fd from the device */
      snprintf(
          msg, sizeof msg,
          "TUN device %s failed (poll: %s): the device was deleted or detached; reading stopped",
          t->name, strerror(err));
    else
      snprintf(msg, sizeof msg, "TUN device %s: %s failed: %s; reading stopped", t->name, syscall,
               strerror(err));
    napi_value e = make_error(env, "ERR_TUN_IO", err, syscall, msg);
    if (on_error) {
      call_js(t, ctx, on_error, 1, &e);
    } else {
      napi_fatal_exception(env, e);
    }
  }

  t->in_callback = false;
  t->active_async = NULL;
  if (t->stale_async) {
    napi_async_destroy(env, t->stale_async);
    t->stale_async = NULL;
  }
  napi_close_handle_scope(env, scope);
}

/* tunBuffers(handle, slotSize, batch) -> ArrayBuffer: the device's rx slots and arrays. */
napi_value vpm_js_tun_buffers(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) THROW_TYPE(env, "tunBuffers(handle, slotSize, batch): expected 3 arguments");
  vpm_tun *t = get_open_tun(env, argv[0], "tunBuffers");
  if (!t) return NULL;
  if (t->bufs) {
    throw_code(env, "ERR_TUN_OPTION", 0, "", "tunBuffers: TUN device %s has its buffers already",
               t->name);
    return NULL;
  }
  uint32_t slot, batch;
  if (!get_u32(env, argv[1], &slot) || slot <= t->headroom || slot % 64 != 0)
    THROW_RANGE(env, "tunBuffers: slotSize must be a multiple of 64 above the header room (%u)",
                t->headroom);
  if (!get_u32(env, argv[2], &batch) || batch == 0 || batch > 4096)
    THROW_RANGE(env, "tunBuffers: batch must be an integer 1..4096");
  if ((uint64_t)slot * batch > (1u << 30))
    THROW_RANGE(env, "tunBuffers: %u slots of %u bytes are more than 1 GiB", batch, slot);
  /* Sections: rx slots, then four arrays of `batch` 32-bit words, each 64-byte aligned,
     then the errnos of any write (up to VPM_TUN_MAX_WRITE packets, also tunWriteBatch's). */
  size_t rx_len = (size_t)slot * batch;
  size_t arr = ((size_t)batch * 4 + 63) & ~(size_t)63;
  size_t len = rx_len + 4 * arr + (size_t)VPM_TUN_MAX_WRITE * 4;
  struct vpm_bufs *b = calloc(1, sizeof *b);
  void *data = NULL;
  if (!b || posix_memalign(&data, 64, len) != 0) {
    free(b);
    throw_code(env, "ERR_TUN_OPEN", ENOMEM, "posix_memalign", "tunBuffers: out of memory (%zu bytes)",
               len);
    return NULL;
  }
  memset(data, 0, len);
  b->data = data;
  b->len = len;
  b->refs = 1; /* the device's */
  napi_value ab;
  if (napi_create_external_arraybuffer(env, data, len, on_bufs_finalize, b, &ab) != napi_ok) {
    free(data);
    free(b);
    throw_code(env, "ERR_TUN_OPEN", 0, "", "tunBuffers: cannot create the ArrayBuffer");
    return NULL;
  }
  b->refs++; /* the ArrayBuffer's, released by its finalizer */
  t->bufs = b;
  t->rx = b->data;
  t->rx_len = rx_len;
  t->rx_offsets = (uint32_t *)(b->data + rx_len);
  t->rx_lengths = (uint32_t *)(b->data + rx_len + arr);
  t->tx_offsets = (uint32_t *)(b->data + rx_len + 2 * arr);
  t->tx_lengths = (uint32_t *)(b->data + rx_len + 3 * arr);
  t->tx_errnos = (int32_t *)(b->data + rx_len + 4 * arr);
  t->slot = slot;
  t->batch = batch;
  return ab;
}

napi_value vpm_js_tun_start(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) THROW_TYPE(env, "tunStart(handle, onBatch[, onError]): expected 2 or 3 arguments");
  vpm_tun *t = get_open_tun(env, argv[0], "tunStart");
  if (!t) return NULL;
  if (t->polling) {
    throw_code(env, "ERR_TUN_STARTED", 0, "",
               "tunStart: TUN device %s is already started; stop() it first", t->name);
    return NULL;
  }
  if (!t->bufs) {
    throw_code(env, "ERR_TUN_OPTION", 0, "", "tunStart: TUN device %s has no buffers (tunBuffers)",
               t->name);
    return NULL;
  }
  if (!is_function(env, argv[1])) THROW_TYPE(env, "tunStart: onBatch must be a function");
  bool has_error_cb = argc > 2 && !is_nullish(env, argv[2]);
  if (has_error_cb && !is_function(env, argv[2]))
    THROW_TYPE(env, "tunStart: onError must be a function");

  /* Leftovers of a start() stopped from inside onBatch are gone already (released at stop). */
  if (t->poll_state == POLL_NONE) {
    uv_loop_t *loop = NULL;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
      throw_code(env, "ERR_TUN_OPEN", 0, "", "tunStart: no event loop");
      return NULL;
    }
    int rc = uv_poll_init(loop, &t->poll, t->fd);
    if (rc < 0) {
      throw_code(env, "ERR_TUN_IO", -rc, "uv_poll_init", "tunStart: cannot poll TUN device %s: %s",
                 t->name, uv_strerror(rc));
      return NULL;
    }
    t->poll.data = t;
    t->poll_state = POLL_INIT;
  }
  napi_value res_name;
  napi_create_string_utf8(env, "vpm:tun", NAPI_AUTO_LENGTH, &res_name);
  if (napi_async_init(env, NULL, res_name, &t->async) != napi_ok) {
    t->async = NULL;
    throw_code(env, "ERR_TUN_IO", 0, "", "tunStart: napi_async_init failed");
    return NULL;
  }
  napi_create_reference(env, argv[1], 1, &t->batch_cb_ref);
  if (has_error_cb) napi_create_reference(env, argv[2], 1, &t->error_cb_ref);
  napi_create_reference(env, argv[0], 1, &t->self_ref);
  int rc = uv_poll_start(&t->poll, UV_READABLE, on_poll);
  if (rc < 0) {
    release_start_state(t);
    throw_code(env, "ERR_TUN_IO", -rc, "uv_poll_start", "tunStart: cannot poll TUN device %s: %s",
               t->name, uv_strerror(rc));
    return NULL;
  }
  t->polling = true;
  return NULL;
}

napi_value vpm_js_tun_stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_tun *t = get_tun(env, argc ? argv[0] : NULL, "tunStop");
  if (t) stop_polling(t);
  return NULL;
}

napi_value vpm_js_tun_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_tun *t = get_tun(env, argc ? argv[0] : NULL, "tunClose");
  if (t) close_impl(t);
  return NULL;
}

/* ---------- writing ---------- */

napi_value vpm_js_tun_write_batch(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5)
    THROW_TYPE(env, "tunWriteBatch(handle, buf, offsets, lengths, count[, errnos]): expected 5 or 6 arguments");
  vpm_tun *t = get_open_tun(env, argv[0], "tunWriteBatch");
  if (!t) return NULL;
  void *bufp, *offp, *lenp;
  size_t blen, noffs, nlens;
  uint32_t count;
  if (!get_typed(env, argv[1], napi_uint8_array, &bufp, &blen))
    THROW_TYPE(env, "tunWriteBatch: buf must be a Buffer/Uint8Array");
  if (!get_typed(env, argv[2], napi_uint32_array, &offp, &noffs))
    THROW_TYPE(env, "tunWriteBatch: offsets must be a Uint32Array");
  if (!get_typed(env, argv[3], napi_uint32_array, &lenp, &nlens))
    THROW_TYPE(env, "tunWriteBatch: lengths must be a Uint32Array");
  if (!get_u32(env, argv[4], &count))
    THROW_TYPE(env, "tunWriteBatch: count must be a non-negative integer");
  if (count > noffs || count > nlens)
    THROW_RANGE(env, "tunWriteBatch: count %u exceeds offsets (%zu) or lengths (%zu)", count, noffs,
                nlens);
  int32_t *errs = NULL;
  size_t nerrs = 0;
  if (argc >= 6 && !is_nullish(env, argv[5])) {
    void *ep;
    if (!get_typed(env, argv[5], napi_int32_array, &ep, &nerrs))
      THROW_TYPE(env, "tunWriteBatch: errnos must be an Int32Array");
    if (nerrs < count) THROW_RANGE(env, "tunWriteBatch: errnos (%zu) shorter than count %u", nerrs, count);
    errs = ep;
  }
  const uint32_t *offsets = offp, *lengths = lenp;
  for (uint32_t i = 0; i < count; i++) {
    if (offsets[i] < t->headroom || (uint64_t)offsets[i] + lengths[i] > blen)
      THROW_RANGE(env,
                  "tunWriteBatch: packet %u (off %u len %u) beyond buffer of %zu bytes or without "
                  "its %u-byte header room",
                  i, offsets[i], lengths[i], blen, t->headroom);
  }
  uint32_t refused = 0;
  uint32_t n = vpm_tun_write_batch(t->fd, bufp, offsets, lengths, count, t->headroom, errs,
                                   &refused, &t->st);
  /* n and refused are at most 4096 (the batch limit): one number carries both. */
  napi_value r;
  napi_create_double(env, (double)n + (double)refused * 65536.0, &r);
  return r;
}

/* tunWriteTx(handle, count): packets [0, count) of the rx buffer per the tx arrays. */
napi_value vpm_js_tun_write_tx(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) THROW_TYPE(env, "tunWriteTx(handle, count): expected 2 arguments");
  vpm_tun *t = get_open_tun(env, argv[0], "tunWriteTx");
  if (!t) return NULL;
  uint32_t count;
  if (!get_u32(env, argv[1], &count) || count > t->batch || !t->bufs)
    THROW_RANGE(env, "tunWriteTx: count must be an integer 0..%u (the batch)", t->batch);
  /* The arrays are JS's to fill: every range is checked against the rx buffer. */
  for (uint32_t i = 0; i < count; i++) {
    if (t->tx_offsets[i] < t->headroom || (uint64_t)t->tx_offsets[i] + t->tx_lengths[i] > t->rx_len)
      THROW_RANGE(env,
                  "tunWriteTx: packet %u (off %u len %u) beyond the rx buffer of %zu bytes or "
                  "without its %u-byte header room",
                  i, t->tx_offsets[i], t->tx_lengths[i], t->rx_len, t->headroom);
  }
  uint32_t refused = 0;
  uint32_t n = vpm_tun_write_batch(t->fd, t->rx, t->tx_offsets, t->tx_lengths, count, t->headroom,
                                   t->tx_errnos, &refused, &t->st);
  napi_value r;
  napi_create_double(env, (double)n + (double)refused * 65536.0, &r);
  return r;
}

/* ---------- stats ---------- */

static void set_num(napi_env env, napi_value obj, const char *key, double v) {
  napi_value n;
  napi_create_double(env, v, &n);
  napi_set_named_property(env, obj, key, n);
}

napi_value vpm_js_tun_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_tun *t = get_tun(env, argc ? argv[0] : NULL, "tunStats");
  if (!t) return NULL;
  napi_value o;
  napi_create_object(env, &o);
  set_num(env, o, "polls", (double)t->st.polls);
  set_num(env, o, "readPackets", (double)t->st.read_packets);
  set_num(env, o, "readBatches", (double)t->st.read_batches);
  set_num(env, o, "readFullBatches", (double)t->st.read_full_batches);
  set_num(env, o, "readEagain", (double)t->st.read_eagain);
  set_num(env, o, "readErrors", (double)t->st.read_errors);
  set_num(env, o, "readTruncated", (double)t->st.read_truncated);
  set_num(env, o, "readShort", (double)t->st.read_short);
  set_num(env, o, "lastReadErrno", t->st.last_read_errno);
  set_num(env, o, "writeCalls", (double)t->st.write_calls);
  set_num(env, o, "writePackets", (double)t->st.write_packets);
  set_num(env, o, "writeQueueFull", (double)t->st.write_queue_full);
  set_num(env, o, "writeErrors", (double)t->st.write_errors);
  set_num(env, o, "lastWriteErrno", t->st.last_write_errno);
  return o;
}

/* ---------- handover: the fd for another process, and adopting one from it ---------- */

/* tunFd(handle) -> the device's fd, for handoverSend (handover.c). */
napi_value vpm_js_tun_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_tun *t = get_open_tun(env, argc ? argv[0] : NULL, "tunFd");
  if (!t) return NULL;
  napi_value r;
  napi_create_int32(env, t->fd, &r);
  return r;
}

/*
 * tunDetach(handle) -> fd: stop, take the fd out of this env's loop (uv_poll_stop removes
 * it from epoll at once) and give it up without closing it; the handle is closed from
 * then on (ERR_TUN_CLOSED) and the fd is the caller's. For a queue fd that a worker
 * thread adopts (tunAdopt in that thread): fds are process-wide, handles per env.
 */
napi_value vpm_js_tun_detach(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_tun *t = get_open_tun(env, argc ? argv[0] : NULL, "tunDetach");
  if (!t) return NULL;
  int fd = t->fd;
  t->fd = -1; /* close_impl then closes the poll handle but never the fd */
  close_impl(t);
  napi_value r;
  napi_create_int32(env, fd, &r);
  return r;
}

/*
 * tunAdopt({ fd, vnetHdr, offload, multiQueue? }) -> the handle tunOpen would
 * give, over an fd received from another process. tun_inspect.c checks what the
 * fd is attached to (refused: ERR_TUN_ADOPT, the fd left to the caller); then it
 * is made non-blocking and close-on-exec, and the offload mask the other process
 * had is set again (device-wide, it survived; set to be sure). The handle owns
 * the fd from then on.
 */
napi_value vpm_js_tun_adopt(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_valuetype ot = napi_undefined;
  if (argc >= 1) napi_typeof(env, argv[0], &ot);
  if (ot != napi_object)
    THROW_TYPE(env, "tunAdopt(opts): opts must be an object { fd, vnetHdr, offload[, multiQueue] }");
  uint32_t fd, offload;
  bool vnet, mq = false;
  napi_value v = get_prop(env, argv[0], "fd");
  if (!v || !get_u32(env, v, &fd) || fd > 0x7fffffff)
    THROW_TYPE(env, "tunAdopt: opts.fd must be a file descriptor (a non-negative integer)");
  v = get_prop(env, argv[0], "vnetHdr");
  if (!v || !get_bool(env, v, &vnet)) THROW_TYPE(env, "tunAdopt: opts.vnetHdr must be a boolean");
  v = get_prop(env, argv[0], "offload");
  if (!v || !get_u32(env, v, &offload) || offload > 0xff)
    THROW_RANGE(env, "tunAdopt: opts.offload must be the TUN_F_* mask in effect, 0..255");
  v = get_prop(env, argv[0], "multiQueue");
  if (v && !is_nullish(env, v) && !get_bool(env, v, &mq))
    THROW_TYPE(env, "tunAdopt: opts.multiQueue must be a boolean");
  if (offload != 0 && !vnet) {
    throw_code(env, "ERR_TUN_OPTION", 0, "",
               "tunAdopt: offload 0x%x without virtio-net headers; only 0 is possible", offload);
    return NULL;
  }

  char name[IFNAMSIZ], why[640], msg[768];
  int err = 0;
  const char *syscall = "";
  int rc = vpm_tun_check_adopt((int)fd, vnet, mq, name, why, sizeof why, &err, &syscall);
  if (rc == 0) {
    int fl = fcntl((int)fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl((int)fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
      err = errno;
      syscall = "fcntl(F_SETFL)";
      snprintf(why, sizeof why, "cannot make %s non-blocking: %s", name, strerror(err));
      rc = -1;
    }
  }
  if (rc == 0) {
    int fdfl = fcntl((int)fd, F_GETFD);
    if (fdfl >= 0 && !(fdfl & FD_CLOEXEC)) fcntl((int)fd, F_SETFD, fdfl | FD_CLOEXEC);
    int orc = vpm_tun_set_offload((int)fd, offload);
    if (orc < 0) {
      err = -orc;
      syscall = "ioctl(TUNSETOFFLOAD)";
      snprintf(why, sizeof why, "cannot set offloads 0x%x on %s: %s", offload, name,
               strerror(err));
      rc = -1;
    }
  }
  if (rc < 0) {
    snprintf(msg, sizeof msg, "cannot adopt fd %u as a TUN device: %s", fd, why);
    napi_throw(env, make_error(env, "ERR_TUN_ADOPT", err, syscall, msg));
    return NULL;
  }
  return wrap_tun(env, (int)fd, name, mq, vnet, offload, true, "tunAdopt", false);
}
