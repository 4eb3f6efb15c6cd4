/*
 * Live capture for `vpm dump`: libpcap, polled on Node's own event loop, packets
 * handed to JS in batches with their kernel timestamps and lengths, and the
 * capture's own drop count (pcap_stats).
 *
 * Theory of operation
 * -------------------
 * capOpen creates and activates one pcap handle (snapshot length, buffer size,
 * promiscuous off), non-blocking, in the ring's normal mode — TPACKET_V3 on
 * Linux: variable-sized frames packed into blocks that the kernel hands over
 * when full or after a short timeout (`timeoutMs`), so that a burst of 64 KiB
 * super-packets and a burst of 64-byte ACKs both fit the same buffer. (Immediate
 * mode would hand each packet over at once but uses fixed frames of the snapshot
 * length: 8 MiB then held ~120 packets, and a burst overflowed it.)
 *
 *   open ──capStart()──► polling ──capClose()──► closed
 *
 * While polling, a uv_poll_t on the selectable fd calls onReadable() (JS) once
 * per readiness; JS then calls capRead() until it returns 0: each call copies up
 * to `max` packets into the caller's buffer (8-byte aligned, back to back) and
 * their records (offset, caplen, len, ts seconds, ts microseconds) into a
 * Float64Array, one pcap_dispatch, no JS call per packet. capRead also drains
 * what is left before a close (the caller waits one block timeout first, so the
 * last partly filled block is handed over). capStats reads pcap_stats: packets
 * the filter passed, and those the kernel dropped because the ring was full.
 *
 * Errors carry stable codes (ERR_CAPTURE_*), as src/inspect/capture.ts expects.
 * A handle is owned by its JS object (napi_wrap, type-tagged); the finalizer and
 * the env cleanup close it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stdarg.h>
#include <pcap/pcap.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "capture.h"

typedef struct {
  napi_env env;
  pcap_t *p;
  uv_poll_t poll;
  bool poll_init;
  bool polling;
  bool wrapped;
  bool closing;
  napi_ref cb_ref, self_ref;
  napi_async_context async;
  napi_async_cleanup_hook_handle cleanup;
  bool cleanup_running; /* the env is being torn down: on_poll_closed ends the hook */
  /* capRead's destination while it runs. */
  uint8_t *buf;
  size_t buf_len, at;
  double *rec;
  uint32_t max, n;
} vpm_cap;

static const napi_type_tag CAP_TAG = {0x2c41e0b7a95d3f61ULL, 0x8e7b14d09f3a6c25ULL};

/* Doubles per record in capRead's Float64Array: offset, caplen, len, ts_sec, ts_usec. */
#define REC 5

static void cap_throw(napi_env env, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cap_throw(napi_env env, const char *code, const char *fmt, ...) {
  char msg[PCAP_ERRBUF_SIZE + 256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_value c, m, e;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &e);
  napi_throw(env, e);
}

static bool get_str(napi_env env, napi_value v, char *out, size_t cap) {
  size_t len = 0;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) return false;
  return napi_get_value_string_utf8(env, v, out, cap, &len) == napi_ok && len < cap - 1;
}

static bool get_u32(napi_env env, napi_value v, uint32_t *out) {
  double d;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return false;
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) return false;
  *out = (uint32_t)d;
  return true;
}

static vpm_cap *get_cap(napi_env env, napi_value v, const char *fn) {
  bool tagged = false;
  void *c = NULL;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_object ||
      napi_check_object_type_tag(env, v, &CAP_TAG, &tagged) != napi_ok || !tagged ||
      napi_unwrap(env, v, &c) != napi_ok || !c) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: first argument must be a handle returned by capOpen()", fn);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
  }
  return c;
}

static void on_poll_closed(uv_handle_t *h) {
  vpm_cap *c = h->data;
  c->poll_init = false;
  if (c->cleanup_running && c->cleanup) {
    napi_async_cleanup_hook_handle hook = c->cleanup;
    c->cleanup = NULL;
    napi_remove_async_cleanup_hook(hook);
  }
  if (!c->wrapped) free(c);
}

static void close_impl(vpm_cap *c) {
  if (c->polling) {
    uv_poll_stop(&c->poll);
    c->polling = false;
  }
  if (c->cb_ref) napi_delete_reference(c->env, c->cb_ref), c->cb_ref = NULL;
  if (c->self_ref) napi_delete_reference(c->env, c->self_ref), c->self_ref = NULL;
  if (c->async) napi_async_destroy(c->env, c->async), c->async = NULL;
  if (c->poll_init && !c->closing) {
    c->closing = true;
    uv_close((uv_handle_t *)&c->poll, on_poll_closed);
  }
  if (c->p) {
    pcap_close(c->p);
    c->p = NULL;
  }
}

static void on_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  vpm_cap *c = data;
  c->wrapped = false;
  close_impl(c);
  if (c->cleanup && !c->cleanup_running)
    napi_remove_async_cleanup_hook(c->cleanup), c->cleanup = NULL;
  if (!c->poll_init) free(c);
}

/*
 * The env (main thread or worker) is torn down: close the capture, and keep the env
 * waiting (the async hook stays registered) until the loop has run the poll handle's
 * close callback, which removes the hook; a loop closed with the handle still on it
 * would abort the worker.
 */
static void on_env_cleanup(napi_async_cleanup_hook_handle handle, void *arg) {
  vpm_cap *c = arg;
  c->cleanup_running = true;
  c->cleanup = handle;
  close_impl(c);
  if (!c->poll_init) {
    c->cleanup = NULL;
    napi_remove_async_cleanup_hook(handle);
  } /* else on_poll_closed removes it */
}

/* capOpen(device, filter, { snaplen, bufferSize, timeoutMs }) -> { linkType, linkName } */
napi_value vpm_js_cap_open(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char dev[256], filter[4096];
  uint32_t snaplen = 65535, bufsize = 32u << 20, timeout = 10;
  if (argc < 2 || !get_str(env, argv[0], dev, sizeof dev) ||
      !get_str(env, argv[1], filter, sizeof filter)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "capOpen(device, filter[, opts]): device and filter must be strings");
    return NULL;
  }
  if (argc >= 3) {
    napi_value v;
    bool has;
    if (napi_has_named_property(env, argv[2], "snaplen", &has) == napi_ok && has) {
      napi_get_named_property(env, argv[2], "snaplen", &v);
      if (!get_u32(env, v, &snaplen) || snaplen < 64) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "capOpen: snaplen must be >= 64");
        return NULL;
      }
    }
    if (napi_has_named_property(env, argv[2], "bufferSize", &has) == napi_ok && has) {
      napi_get_named_property(env, argv[2], "bufferSize", &v);
      if (!get_u32(env, v, &bufsize) || bufsize < (1u << 16)) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "capOpen: bufferSize must be >= 65536");
        return NULL;
      }
    }
    if (napi_has_named_property(env, argv[2], "timeoutMs", &has) == napi_ok && has) {
      napi_get_named_property(env, argv[2], "timeoutMs", &v);
      if (!get_u32(env, v, &timeout) || timeout < 1 || timeout > 1000) {
        napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "capOpen: timeoutMs must be 1..1000");
        return NULL;
      }
    }
  }
  char err[PCAP_ERRBUF_SIZE] = "";
  pcap_t *p = pcap_create(dev, err);
  if (!p) {
    cap_throw(env, "ERR_CAPTURE_DEVICE", "%s", err);
    return NULL;
  }
  pcap_set_snaplen(p, (int)snaplen);
  pcap_set_promisc(p, 0);
  pcap_set_timeout(p, (int)timeout);
  pcap_set_buffer_size(p, (int)bufsize);
  int rc = pcap_activate(p);
  if (rc < 0) {
    const char *code = rc == PCAP_ERROR_NO_SUCH_DEVICE     ? "ERR_CAPTURE_NO_DEVICE"
                       : rc == PCAP_ERROR_PERM_DENIED      ? "ERR_CAPTURE_PERMISSION"
                                                           : "ERR_CAPTURE_DEVICE";
    /* libpcap's own text says what failed (e.g. "socket: Operation not permitted"); the
       status string only what kind of failure it was. */
    const char *why = pcap_geterr(p);
    cap_throw(env, code, "%s", why && why[0] ? why : pcap_statustostr(rc));
    pcap_close(p);
    return NULL;
  }
  if (pcap_setnonblock(p, 1, err) < 0) {
    cap_throw(env, "ERR_CAPTURE_DEVICE", "%s", err);
    pcap_close(p);
    return NULL;
  }
  if (filter[0]) {
    struct bpf_program prog;
    if (pcap_compile(p, &prog, filter, 1, PCAP_NETMASK_UNKNOWN) < 0) {
      cap_throw(env, "ERR_CAPTURE_FILTER", "%s", pcap_geterr(p));
      pcap_close(p);
      return NULL;
    }
    int frc = pcap_setfilter(p, &prog);
    pcap_freecode(&prog);
    if (frc < 0) {
      cap_throw(env, "ERR_CAPTURE_FILTER", "%s", pcap_geterr(p));
      pcap_close(p);
      return NULL;
    }
  }
  vpm_cap *c = calloc(1, sizeof *c);
  if (!c) {
    pcap_close(p);
    cap_throw(env, "ERR_CAPTURE_DEVICE", "out of memory");
    return NULL;
  }
  c->env = env;
  c->p = p;
  int dlt = pcap_datalink(p);
  const char *name = pcap_datalink_val_to_name(dlt);
  napi_value obj, lt, ln;
  napi_create_object(env, &obj);
  napi_create_int32(env, dlt, &lt);
  napi_create_string_utf8(env, name ? name : "UNKNOWN", NAPI_AUTO_LENGTH, &ln);
  napi_set_named_property(env, obj, "dlt", lt);
  napi_set_named_property(env, obj, "linkName", ln);
  napi_type_tag_object(env, obj, &CAP_TAG);
  napi_wrap(env, obj, c, on_finalize, NULL, NULL);
  c->wrapped = true;
  napi_add_async_cleanup_hook(env, on_env_cleanup, c, &c->cleanup);
  return obj;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  vpm_cap *c = h->data;
  if (!c->polling || !c->cb_ref) return;
  napi_env env = c->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, arg, result;
  napi_get_reference_value(env, c->cb_ref, &cb);
  napi_get_global(env, &recv);
  napi_get_boolean(env, status < 0, &arg);
  if (cb && napi_make_callback(env, c->async, recv, cb, 1, &arg, &result) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

/* capStart(handle, onReadable(failed: boolean)) */
napi_value vpm_js_cap_start(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_cap *c = argc >= 1 ? get_cap(env, argv[0], "capStart") : NULL;
  if (!c) return NULL;
  napi_valuetype t;
  if (argc < 2 || napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "capStart: onReadable must be a function");
    return NULL;
  }
  if (!c->p || c->polling) {
    cap_throw(env, "ERR_CAPTURE_DEVICE", "capStart: the capture is closed or started");
    return NULL;
  }
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  int fd = pcap_get_selectable_fd(c->p);
  if (fd < 0 || uv_poll_init(loop, &c->poll, fd) < 0) {
    cap_throw(env, "ERR_CAPTURE_DEVICE", "capStart: the capture has no pollable descriptor");
    return NULL;
  }
  c->poll.data = c;
  c->poll_init = true;
  napi_value name;
  napi_create_string_utf8(env, "vpm:capture", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &c->async);
  napi_create_reference(env, argv[1], 1, &c->cb_ref);
  napi_create_reference(env, argv[0], 1, &c->self_ref);
  uv_poll_start(&c->poll, UV_READABLE, on_readable);
  c->polling = true;
  return NULL;
}

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes) {
  vpm_cap *c = (vpm_cap *)user;
  size_t len = h->caplen;
  if (c->n >= c->max || c->at + len > c->buf_len) return; /* cannot happen: sized by capRead */
  memcpy(c->buf + c->at, bytes, len);
  double *r = c->rec + (size_t)c->n * REC;
  r[0] = (double)c->at;
  r[1] = (double)h->caplen;
  r[2] = (double)h->len;
  r[3] = (double)h->ts.tv_sec;
  r[4] = (double)h->ts.tv_usec;
  c->at = (c->at + len + 7) & ~(size_t)7;
  c->n++;
}

/*
 * capRead(handle, buf, records: Float64Array) -> count. At most
 * min(records.length / 5, buf.length / (snaplen rounded up to 8)) packets, so
 * that every one dispatched fits.
 */
napi_value vpm_js_cap_read(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_cap *c = argc >= 1 ? get_cap(env, argv[0], "capRead") : NULL;
  if (!c) return NULL;
  void *bp = NULL, *rp = NULL;
  size_t blen = 0, rlen = 0;
  napi_typedarray_type bt, rt;
  napi_value ab;
  size_t boff;
  bool isb = false, isr = false;
  if (argc < 3 || napi_is_typedarray(env, argv[1], &isb) != napi_ok || !isb ||
      napi_is_typedarray(env, argv[2], &isr) != napi_ok || !isr) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "capRead(handle, buf: Uint8Array, records: Float64Array)");
    return NULL;
  }
  napi_get_typedarray_info(env, argv[1], &bt, &blen, &bp, &ab, &boff);
  napi_get_typedarray_info(env, argv[2], &rt, &rlen, &rp, &ab, &boff);
  if (bt != napi_uint8_array || rt != napi_float64_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "capRead: buf must be a Uint8Array, records a Float64Array");
    return NULL;
  }
  napi_value out;
  if (!c->p) {
    napi_create_uint32(env, 0, &out);
    return out;
  }
  size_t per = ((size_t)pcap_snapshot(c->p) + 7) & ~(size_t)7;
  size_t max = rlen / REC;
  if (blen / per < max) max = blen / per;
  c->buf = bp;
  c->buf_len = blen;
  c->rec = rp;
  c->at = 0;
  c->n = 0;
  c->max = (uint32_t)max;
  if (max > 0) {
    int rc = pcap_dispatch(c->p, (int)max, on_packet, (u_char *)c);
    if (rc == PCAP_ERROR) {
      cap_throw(env, "ERR_CAPTURE_DEVICE", "reading the capture failed: %s", pcap_geterr(c->p));
      return NULL;
    }
  }
  napi_create_uint32(env, c->n, &out);
  return out;
}

/* capStats(handle) -> { received, dropped, ifDropped } (pcap_stats, since open) */
napi_value vpm_js_cap_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_cap *c = argc >= 1 ? get_cap(env, argv[0], "capStats") : NULL;
  if (!c) return NULL;
  struct pcap_stat st;
  memset(&st, 0, sizeof st);
  if (!c->p || pcap_stats(c->p, &st) < 0) {
    napi_value n;
    napi_get_null(env, &n);
    return n;
  }
  napi_value o, a, b, d;
  napi_create_object(env, &o);
  napi_create_double(env, st.ps_recv, &a);
  napi_create_double(env, st.ps_drop, &b);
  napi_create_double(env, st.ps_ifdrop, &d);
  napi_set_named_property(env, o, "received", a);
  napi_set_named_property(env, o, "dropped", b);
  napi_set_named_property(env, o, "ifDropped", d);
  return o;
}

/* capClose(handle): idempotent. */
napi_value vpm_js_cap_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  vpm_cap *c = argc >= 1 ? get_cap(env, argv[0], "capClose") : NULL;
  if (c) close_impl(c);
  return NULL;
}

/* capDevices() -> names of the devices libpcap can open in this network namespace */
napi_value vpm_js_cap_devices(napi_env env, napi_callback_info info) {
  (void)info;
  char err[PCAP_ERRBUF_SIZE];
  pcap_if_t *all = NULL;
  napi_value arr;
  napi_create_array(env, &arr);
  if (pcap_findalldevs(&all, err) < 0) return arr;
  uint32_t i = 0;
  for (pcap_if_t *d = all; d; d = d->next) {
    napi_value s;
    napi_create_string_utf8(env, d->name, NAPI_AUTO_LENGTH, &s);
    napi_set_element(env, arr, i++, s);
  }
  pcap_freealldevs(all);
  return arr;
}
