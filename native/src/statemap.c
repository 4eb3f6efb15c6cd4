/*
 * stateMap(path, bytes): an ArrayBuffer whose memory is a MAP_SHARED mapping
 * of the file `path`, created (O_EXCL: never an existing file, mode 0600,
 * O_NOFOLLOW) and sized to `bytes` (zero-filled by ftruncate).
 *
 * Theory of operation. What the daemon writes into the buffer is written into
 * the file's pages themselves: there is no write-back step that a crash could
 * skip. When the process dies — exit, kill -9, a crash, the OOM killer — the
 * kernel keeps the pages (they belong to the file, on tmpfs under /run or in
 * the page cache), so the next daemon reads every store that the dead one
 * made, in the state it was left in mid-update: the reader checks each record
 * (src/state/flow-file.ts) and never trusts one whose checksum does not match.
 * Only a host crash loses the file's content, and the TUN device with it.
 *
 * The mapping is unmapped when the ArrayBuffer is garbage collected (its
 * finalizer); the fd is closed right after mmap (the mapping holds the file).
 * Errors throw an Error with code ERR_STATE_MAP, errno and syscall.
 */
#define _GNU_SOURCE
#include "statemap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void throw_map(napi_env env, int err, const char *syscall, const char *path) {
  char msg[512];
  snprintf(msg, sizeof msg, "cannot map state file %s: %s failed: %s", path, syscall,
           strerror(err));
  napi_value m, e, c, n, s;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &e);
  napi_create_string_utf8(env, "ERR_STATE_MAP", NAPI_AUTO_LENGTH, &c);
  napi_set_named_property(env, e, "code", c);
  napi_create_int32(env, err, &n);
  napi_set_named_property(env, e, "errno", n);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &s);
  napi_set_named_property(env, e, "syscall", s);
  napi_throw(env, e);
}

static void on_unmap(napi_env env, void *data, void *hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

napi_value vpm_js_state_map(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[4096];
  size_t plen = 0;
  napi_valuetype t0, t1;
  if (argc < 2 || napi_typeof(env, argv[0], &t0) != napi_ok || t0 != napi_string ||
      napi_typeof(env, argv[1], &t1) != napi_ok || t1 != napi_number) {
    napi_throw_type_error(env, NULL, "stateMap(path: string, bytes: number): bad arguments");
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[0], path, sizeof path, &plen);
  if (plen == 0 || plen >= sizeof path - 1) {
    napi_throw_range_error(env, NULL, "stateMap: path must be 1..4094 bytes");
    return NULL;
  }
  double d;
  napi_get_value_double(env, argv[1], &d);
  /* Up to 4 GiB: the largest table (1<<22 flows with IPv6) is about 420 MiB. */
  if (!(d >= 1 && d <= 4294967296.0) || d != (double)(uint64_t)d) {
    napi_throw_range_error(env, NULL, "stateMap: bytes must be an integer in 1..2^32");
    return NULL;
  }
  size_t bytes = (size_t)d;
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    throw_map(env, errno, "open", path);
    return NULL;
  }
  if (ftruncate(fd, (off_t)bytes) < 0) {
    int err = errno;
    close(fd);
    unlink(path);
    throw_map(env, err, "ftruncate", path);
    return NULL;
  }
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (p == MAP_FAILED) {
    unlink(path);
    throw_map(env, err, "mmap", path);
    return NULL;
  }
  napi_value ab;
  if (napi_create_external_arraybuffer(env, p, bytes, on_unmap, (void *)(uintptr_t)bytes, &ab) !=
      napi_ok) {
    munmap(p, bytes);
    unlink(path);
    throw_map(env, ENOMEM, "napi_create_external_arraybuffer", path);
    return NULL;
  }
  return ab;
}
