/*
 * The control connection: one unix stream connection per process to the vpm
 * daemon, newline-delimited JSON (docs/control-protocol.md).
 *
 * Theory of operation
 * -------------------
 * The daemon ties every port it hands out to the connection the request came
 * on and takes it back when that connection closes. So the connection is
 * opened on first need and then kept for the life of the process; the kernel
 * closes it when the process dies, however it dies, and that is the release
 * of last resort. It is SOCK_CLOEXEC (a program exec'd from here starts its
 * own), non-blocking, and never numbered 0-2 (a program that closes stdin and
 * opens /dev/null expects to get fd 0 back).
 *
 * States, all under ctl_lock:
 *
 *   closed (fd -1) ──first request──► open ──EOF / send error──► closed
 *        ▲                             │
 *        └──fork(), in the child───────┘  (fd forgotten, NOT closed)
 *
 * - Requests are serialised: one request in flight at a time, each with its
 *   own id, answered by the line carrying that id. Every wait (connect, write,
 *   read) is a poll() against one deadline, so nothing blocks for longer than
 *   VPM_TIMEOUT_MS in total.
 * - A request that times out (or whose answer is buried under a malformed
 *   line) is abandoned, not the connection: closing it would drop every port
 *   this process holds. Its late answer is recognised by id and skipped; if it
 *   granted a port, that port is released at once (one-way "release").
 * - Output goes through a small buffer: a line the daemon has not taken yet
 *   by the deadline stays queued and goes out before the next one, so a
 *   half-written line can never merge with the next request.
 * - fork(): in the child the connection belongs to the parent. The child
 *   forgets its number for new requests (it opens its own on need), but keeps
 *   the inherited descriptor open: it holds the inherited registrations alive
 *   while the child runs, which is what pre-fork servers need. Another thread
 *   of the parent may have held ctl_lock at fork time; the child, which has
 *   only the forking thread, starts with a fresh lock and fresh buffers.
 * - A program that closes all its descriptors (daemons do) would cut the
 *   connection under us: close() of a control descriptor is refused silently
 *   (it returns 0 and leaves it open), and before each use the descriptor is
 *   checked (device and inode) to still be our socket; if the program got the
 *   number back some other way (dup2 over it), it is forgotten and a new
 *   connection is opened.
 * - The daemon restarts (a crash, `kill -9`, an upgrade): the next daemon
 *   recovers this process's registrations from its state file, without a
 *   connection of ours, and our old connection is dead (its end closed). We
 *   only notice when we next use it, and nothing is used by an idle server;
 *   so a request finding it dead tries once more on a new connection, and so
 *   does a release (VPM_ONEWAY_HELD), which also opens a new connection when
 *   there is none, if this process ever had one: a registration the new
 *   daemon holds ends only by our release or our exit. A release that finds
 *   no daemon at all (the gap of a restart) is kept (MAX_HELD, the oldest
 *   dropped first) and goes out first on the next connection this process
 *   opens, before that connection's request: a release of (pid, fd, port)
 *   never overtakes a later bind of the same descriptor.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "preload.h"

#define RBUF_CAP (64 * 1024 + 1024) /* the protocol's line limit, and some */
#define WBUF_CAP 16384
#define MAX_ABANDONED 16
#define MAX_INHERITED 8
#define REOPEN_BACKOFF_MS 1000 /* connect reports: how long to leave a dead daemon alone */
#define MAX_HELD 16            /* releases waiting for a daemon */
#define HELD_ARGS 768

struct abandoned {
  uint64_t id;
  char proto[4];
  unsigned vport;
  int fd;
};

static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static int ctl_fd = -1;
static dev_t ctl_dev;
static ino_t ctl_ino;
static uint64_t next_id = 1;
static char rbuf[RBUF_CAP];
static size_t rlen;
static int rdiscard; /* dropping the rest of an overlong line */
static char wbuf[WBUF_CAP];
static size_t wlen;
static struct abandoned abandoned[MAX_ABANDONED];
static unsigned n_abandoned;
static int64_t last_open_failure_ms = -1;
static int64_t last_report_timeout_ms = -1;
static int ever_connected; /* this process opened a connection: the daemon may hold ours */
/* One-way messages (releases) that found no daemon: sent first on the next connection. */
static struct {
  char cmd[16];
  char args[HELD_ARGS];
} held[MAX_HELD];
static unsigned n_held;

/* Descriptors of control connections inherited over fork(). */
static struct {
  int fd;
  dev_t dev;
  ino_t ino;
} inherited[MAX_INHERITED];
static unsigned n_inherited;
static pthread_mutex_t inherited_lock = PTHREAD_MUTEX_INITIALIZER;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining(int64_t deadline) {
  int64_t left = deadline - now_ms();
  return left < 0 ? 0 : left > 0x7fffffff ? 0x7fffffff : (int)left;
}

static int same_socket(int fd, dev_t dev, ino_t ino) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev && st.st_ino == ino;
}

static void forget_connection(int close_it) {
  if (ctl_fd >= 0 && close_it) vpm_real.close(ctl_fd);
  ctl_fd = -1;
  rlen = 0;
  rdiscard = 0;
  wlen = 0;
  n_abandoned = 0;
}

static int queue(const char *line, size_t n);

/* A fresh connection: the releases that waited for one go first. Under ctl_lock. */
static void queue_held(void) {
  char line[1024 + HELD_ARGS];
  unsigned i = 0;
  for (; i < n_held; i++) {
    int n = snprintf(line, sizeof line, "{\"v\":1,\"id\":%llu,\"cmd\":\"%s\",\"oneway\":true,\"args\":%s}\n",
                     (unsigned long long)next_id++, held[i].cmd, held[i].args);
    if (n < 0 || (size_t)n >= sizeof line) continue;
    if (queue(line, (size_t)n) != 0) break; /* the rest on the next connection */
    vpm_debug("-> %.*s (kept while no daemon was there)", n - 1, line);
  }
  memmove(held, held + i, sizeof held[0] * (n_held - i));
  n_held -= i;
}

/* Keep a one-way message for the next connection (VPM_ONEWAY_HELD). Under ctl_lock. */
static void hold(const char *cmd, const char *args) {
  if (strlen(cmd) >= sizeof held[0].cmd || strlen(args) >= sizeof held[0].args) return;
  if (n_held == MAX_HELD) {
    vpm_debug("too many %s messages waiting for a daemon: the oldest is dropped", cmd);
    memmove(held, held + 1, sizeof held[0] * (MAX_HELD - 1));
    n_held--;
  }
  strcpy(held[n_held].cmd, cmd);
  strcpy(held[n_held].args, args);
  n_held++;
  vpm_debug("no daemon: %s kept for the next connection", cmd);
}

/* Open the connection if there is none. 0, or -1 with why in `why`. */
static int ensure_open(int64_t deadline, char *why, size_t why_cap, int *unreachable) {
  struct sockaddr_un sa;
  struct stat st;
  int fd;

  *unreachable = 1;
  if (ctl_fd >= 0) {
    if (same_socket(ctl_fd, ctl_dev, ctl_ino)) return 0;
    vpm_debug("control descriptor %d is no longer our socket; opening a new connection", ctl_fd);
    forget_connection(0); /* the number is the program's now: do not close it */
  }
  if (strlen(vpm_socket_path) >= sizeof sa.sun_path) {
    snprintf(why, why_cap, "control socket path %s is too long", vpm_socket_path);
    return -1;
  }
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, vpm_socket_path);

  fd = vpm_real.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    snprintf(why, why_cap, "socket(AF_UNIX): %s", strerror(errno));
    return -1;
  }
  if (fd < 3) {
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    vpm_real.close(fd);
    if (hi < 0) {
      snprintf(why, why_cap, "fcntl(F_DUPFD_CLOEXEC): %s", strerror(errno));
      return -1;
    }
    fd = hi;
  }
  for (;;) {
    if (vpm_real.connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EINPROGRESS) {
      /* The daemon's backlog is full: try again until the deadline. */
      if (remaining(deadline) == 0) {
        vpm_real.close(fd);
        *unreachable = 0;
        snprintf(why, why_cap, "the vpm daemon at %s did not accept a connection within %u ms",
                 vpm_socket_path, vpm_timeout_ms);
        return -1;
      }
      poll(NULL, 0, remaining(deadline) < 10 ? remaining(deadline) : 10);
      continue;
    }
    int e = errno;
    vpm_real.close(fd);
    if (e == ENOENT || e == ECONNREFUSED)
      snprintf(why, why_cap, "vpm is not running (no daemon at %s)", vpm_socket_path);
    else if (e == EACCES)
      snprintf(why, why_cap,
               "permission denied on %s: this user may not connect to the control socket "
               "(control.group, applications[].users: docs/security.md)",
               vpm_socket_path);
    else
      snprintf(why, why_cap, "cannot connect to the vpm daemon at %s: %s", vpm_socket_path,
               strerror(e));
    return -1;
  }
  if (fstat(fd, &st) != 0) {
    snprintf(why, why_cap, "fstat: %s", strerror(errno));
    vpm_real.close(fd);
    return -1;
  }
  ctl_fd = fd;
  ctl_dev = st.st_dev;
  ctl_ino = st.st_ino;
  rlen = 0;
  rdiscard = 0;
  wlen = 0;
  n_abandoned = 0;
  ever_connected = 1;
  vpm_debug("connected to %s (fd %d)", vpm_socket_path, fd);
  queue_held();
  return 0;
}

/* Write out what is queued, until the deadline. 0: all sent; 1: some left
 * (deadline); -1: the connection is broken (closed here). */
static int flush(int64_t deadline) {
  size_t off = 0;
  int rc = 0;
  while (off < wlen) {
    ssize_t n = send(ctl_fd, wbuf + off, wlen - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      struct pollfd p = {.fd = ctl_fd, .events = POLLOUT};
      int t = remaining(deadline);
      if (t == 0) {
        rc = 1;
        break;
      }
      if (poll(&p, 1, t) < 0 && errno != EINTR) {
        rc = -1;
        break;
      }
      continue;
    }
    rc = -1;
    break;
  }
  if (rc < 0) {
    vpm_debug("control connection broken while sending: %s", strerror(errno));
    forget_connection(1);
    return -1;
  }
  memmove(wbuf, wbuf + off, wlen - off);
  wlen -= off;
  return rc;
}

static int queue(const char *line, size_t n) {
  if (wlen + n > WBUF_CAP) return -1;
  memcpy(wbuf + wlen, line, n);
  wlen += n;
  return 0;
}

static void release_abandoned(const struct abandoned *a, unsigned port) {
  char args[768];
  int n = snprintf(args, sizeof args,
                   "{\"aid\":\"%s\",\"proto\":\"%s\",\"vport\":%u,\"port\":%u,\"pid\":%d,\"fd\":%d}",
                   vpm_aid_json, a->proto, a->vport, port, (int)getpid(), a->fd);
  char line[1024];
  if (n < 0 || (size_t)n >= sizeof args) return;
  n = snprintf(line, sizeof line, "{\"v\":1,\"id\":%llu,\"cmd\":\"release\",\"oneway\":true,\"args\":%s}\n",
               (unsigned long long)next_id++, args);
  if (n < 0 || (size_t)n >= sizeof line) return;
  vpm_debug("late answer granted %s port %u (for %u): releasing it", a->proto, port, a->vport);
  queue(line, (size_t)n);
}

static void abandon(uint64_t id, const struct vpm_bind_intent *intent) {
  struct abandoned *a;
  if (!intent) return;
  if (n_abandoned == MAX_ABANDONED) {
    memmove(abandoned, abandoned + 1, sizeof abandoned[0] * (MAX_ABANDONED - 1));
    n_abandoned--;
  }
  a = &abandoned[n_abandoned++];
  a->id = id;
  snprintf(a->proto, sizeof a->proto, "%s", intent->proto);
  a->vport = intent->vport;
  a->fd = intent->fd;
}

/* A line that is not the answer we wait for: the late answer to an abandoned
 * request, or noise. */
static void stray_line(uint64_t id, int has_id, const char *line, const char *end) {
  for (unsigned i = 0; has_id && i < n_abandoned; i++) {
    if (abandoned[i].id != id) continue;
    struct abandoned a = abandoned[i];
    memmove(abandoned + i, abandoned + i + 1, sizeof abandoned[0] * (n_abandoned - i - 1));
    n_abandoned--;
    const char *ok, *result, *port;
    uint64_t p;
    if (vpm_json_member(line, end, "ok", &ok) && vpm_json_literal(ok, end, "true") &&
        vpm_json_member(line, end, "result", &result) &&
        vpm_json_member(result, end, "port", &port) && vpm_json_uint(port, end, &p) && p >= 1 &&
        p <= 65535)
      release_abandoned(&a, (unsigned)p);
    return;
  }
  vpm_debug("skipped a line that answers nothing we wait for (id %llu)", (unsigned long long)id);
}

/* reply->message = "malformed answer from the vpm daemon at P: why: \"excerpt\"". */
static void malformed(struct vpm_reply *reply, const char *why, const char *line, size_t len) {
  char excerpt[64];
  size_t n = len < 60 ? len : 60;
  for (size_t i = 0; i < n; i++)
    excerpt[i] = (unsigned char)line[i] < 0x20 || (unsigned char)line[i] >= 0x7f ? '?' : line[i];
  excerpt[n] = '\0';
  snprintf(reply->message, sizeof reply->message,
           "malformed answer from the vpm daemon at %s: %s: \"%s%s\"", vpm_socket_path, why,
           excerpt, len > n ? "..." : "");
}

/* One complete line: is it the answer to request `id`? 1 yes (reply filled),
 * 0 no (handled as stray), -1 malformed (reply->message says why). */
static int take_line(const char *line, size_t len, uint64_t want, struct vpm_reply *reply) {
  const char *end = line + len, *after, *v, *ok, *obj;
  uint64_t id = 0;
  int has_id;

  after = vpm_json_skip(line, end, 0);
  while (after && after < end && (*after == ' ' || *after == '\t' || *after == '\r')) after++;
  if (!after || after != end) {
    malformed(reply, "not JSON", line, len);
    return -1;
  }
  {
    const char *p = line;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (p >= end || *p != '{') {
      malformed(reply, "not a JSON object", line, len);
      return -1;
    }
  }
  has_id = vpm_json_member(line, end, "id", &v) && vpm_json_uint(v, end, &id);
  if (has_id && id != want) {
    stray_line(id, 1, line, end);
    return 0;
  }
  if (!has_id) {
    /* id null: the daemon could not read a request. Ours is the only one in
     * flight, so it is the answer; anything else without an id is noise. */
    if (!(vpm_json_member(line, end, "id", &v) && vpm_json_literal(v, end, "null"))) {
      stray_line(0, 0, line, end);
      return 0;
    }
  }
  if (!vpm_json_member(line, end, "ok", &ok)) {
    malformed(reply, "no \"ok\"", line, len);
    return -1;
  }
  if (vpm_json_literal(ok, end, "true")) {
    uint64_t port;
    if (!has_id) {
      malformed(reply, "a success without an id", line, len);
      return -1;
    }
    if (!vpm_json_member(line, end, "result", &obj)) {
      malformed(reply, "a success without a result", line, len);
      return -1;
    }
    reply->ok = 1;
    reply->port = 0;
    if (vpm_json_member(obj, end, "port", &v)) {
      if (!vpm_json_uint(v, end, &port) || port < 1 || port > 65535) {
        malformed(reply, "result.port is not a port number", line, len);
        return -1;
      }
      reply->port = (unsigned)port;
    }
    return 1;
  }
  if (!vpm_json_literal(ok, end, "false") || !vpm_json_member(line, end, "error", &obj) ||
      !vpm_json_member(obj, end, "code", &v) ||
      !vpm_json_string(v, end, reply->code, sizeof reply->code) || reply->code[0] == '\0') {
    malformed(reply, "an error without error.code", line, len);
    return -1;
  }
  reply->ok = 0;
  if (!vpm_json_member(obj, end, "message", &v) ||
      !vpm_json_string(v, end, reply->message, sizeof reply->message))
    snprintf(reply->message, sizeof reply->message, "(no message)");
  /* One line on stderr, whatever the daemon put in it. */
  for (char *c = reply->message; *c; c++)
    if ((unsigned char)*c < 0x20) *c = ' ';
  return 1;
}

/* Read lines until the answer with id `want`. */
static enum vpm_call_status await_reply(uint64_t want, int64_t deadline, struct vpm_reply *reply) {
  for (;;) {
    /* Whole lines already buffered first. */
    char *nl = memchr(rbuf, '\n', rlen);
    while (nl) {
      size_t len = (size_t)(nl - rbuf);
      int r = 0;
      if (rdiscard) {
        rdiscard = 0;
      } else if (len > 0) {
        r = take_line(rbuf, len, want, reply);
      }
      memmove(rbuf, nl + 1, rlen - len - 1);
      rlen -= len + 1;
      if (r == 1) return VPM_CALL_ANSWER;
      if (r < 0) return VPM_CALL_MALFORMED;
      nl = memchr(rbuf, '\n', rlen);
    }
    if (rlen == sizeof rbuf) {
      /* A line longer than the protocol allows: drop it up to its newline. */
      rlen = 0;
      rdiscard = 1;
      snprintf(reply->message, sizeof reply->message,
               "malformed answer from the vpm daemon at %s: a line longer than %d bytes",
               vpm_socket_path, RBUF_CAP);
      return VPM_CALL_MALFORMED;
    }
    struct pollfd p = {.fd = ctl_fd, .events = POLLIN};
    int t = remaining(deadline);
    if (t == 0) return VPM_CALL_TIMEOUT;
    int pr = poll(&p, 1, t);
    if (pr < 0 && errno != EINTR) {
      snprintf(reply->message, sizeof reply->message, "poll: %s", strerror(errno));
      return VPM_CALL_UNREACHABLE;
    }
    if (pr <= 0) continue;
    ssize_t n = recv(ctl_fd, rbuf + rlen, sizeof rbuf - rlen, MSG_DONTWAIT);
    if (n > 0) {
      rlen += (size_t)n;
      continue;
    }
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    snprintf(reply->message, sizeof reply->message, "the vpm daemon at %s closed the connection%s%s",
             vpm_socket_path, n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
    forget_connection(1);
    return VPM_CALL_UNREACHABLE;
  }
}

static int recent(int64_t t) { return t >= 0 && now_ms() - t < REOPEN_BACKOFF_MS; }

enum vpm_call_status vpm_ctl_call(const char *cmd, const char *args, struct vpm_reply *reply,
                                  const struct vpm_bind_intent *intent, int report) {
  int64_t deadline = now_ms() + vpm_timeout_ms;
  enum vpm_call_status st;
  char line[1536];
  int unreachable, n, fresh, attempt;

  memset(reply, 0, sizeof *reply);
  pthread_mutex_lock(&ctl_lock);
  if (report && ((ctl_fd < 0 && recent(last_open_failure_ms)) || recent(last_report_timeout_ms))) {
    snprintf(reply->message, sizeof reply->message, "the daemon failed a moment ago; not asked");
    st = VPM_CALL_UNREACHABLE;
    goto out;
  }
  for (attempt = 0;; attempt++) {
    fresh = ctl_fd < 0;
    if (ensure_open(deadline, reply->message, sizeof reply->message, &unreachable) != 0) {
      last_open_failure_ms = now_ms();
      st = unreachable ? VPM_CALL_UNREACHABLE : VPM_CALL_TIMEOUT;
      goto out;
    }
    uint64_t id = next_id++;
    n = snprintf(line, sizeof line, "{\"v\":1,\"id\":%llu,\"cmd\":\"%s\",\"args\":%s}\n",
                 (unsigned long long)id, cmd, args);
    if (n < 0 || (size_t)n >= sizeof line) {
      snprintf(reply->message, sizeof reply->message, "request too long");
      st = VPM_CALL_MALFORMED;
      goto out;
    }
    vpm_debug("-> %.*s", n - 1, line);
    if (queue(line, (size_t)n) != 0) {
      snprintf(reply->message, sizeof reply->message,
               "the vpm daemon at %s is not reading its control connection", vpm_socket_path);
      st = VPM_CALL_BUSY;
      goto out;
    }
    int fr = flush(deadline);
    if (fr < 0) {
      /* A connection the daemon closed since we last used it (it restarted):
       * one more try on a new one. */
      if (!fresh && attempt == 0) continue;
      snprintf(reply->message, sizeof reply->message,
               "the vpm daemon at %s closed the connection", vpm_socket_path);
      st = VPM_CALL_UNREACHABLE;
      goto out;
    }
    if (fr > 0) {
      abandon(id, intent);
      snprintf(reply->message, sizeof reply->message,
               "the vpm daemon at %s did not take the request within %u ms", vpm_socket_path,
               vpm_timeout_ms);
      st = VPM_CALL_TIMEOUT;
      goto out;
    }
    st = await_reply(id, deadline, reply);
    if (st == VPM_CALL_UNREACHABLE && !fresh && attempt == 0 && ctl_fd < 0) continue;
    if (st == VPM_CALL_TIMEOUT) {
      abandon(id, intent);
      if (report) last_report_timeout_ms = now_ms();
      snprintf(reply->message, sizeof reply->message,
               "the vpm daemon at %s did not answer within %u ms", vpm_socket_path,
               vpm_timeout_ms);
    } else if (st == VPM_CALL_MALFORMED) {
      abandon(id, intent); /* the real answer may still come */
    }
    if (st == VPM_CALL_ANSWER && wlen > 0) flush(now_ms()); /* a release queued by stray_line */
    goto out;
  }
out:
  pthread_mutex_unlock(&ctl_lock);
  return st;
}

int vpm_ctl_oneway(const char *cmd, const char *args, enum vpm_oneway_mode mode) {
  /* Never hold the program up for long: a one-way message that cannot go out
   * by this deadline stays queued and goes out before the next one. */
  int64_t deadline = now_ms() + (vpm_timeout_ms < 200 ? vpm_timeout_ms : 200);
  char line[1536], why[256];
  int n, rc = -1, unreachable, fresh, attempt;

  pthread_mutex_lock(&ctl_lock);
  if (ctl_fd < 0 && mode == VPM_ONEWAY_HELD && !ever_connected) goto out; /* nothing of ours there */
  for (attempt = 0;; attempt++) {
    fresh = ctl_fd < 0;
    if (fresh && last_open_failure_ms >= 0 && now_ms() - last_open_failure_ms < REOPEN_BACKOFF_MS) {
      if (mode == VPM_ONEWAY_HELD) {
        hold(cmd, args);
        rc = 0;
      }
      goto out;
    }
    if (ensure_open(deadline, why, sizeof why, &unreachable) != 0) {
      last_open_failure_ms = now_ms();
      vpm_debug("%s: %s not sent", why, cmd);
      if (mode == VPM_ONEWAY_HELD) {
        hold(cmd, args);
        rc = 0;
      }
      goto out;
    }
    n = snprintf(line, sizeof line, "{\"v\":1,\"id\":%llu,\"cmd\":\"%s\",\"oneway\":true,\"args\":%s}\n",
                 (unsigned long long)next_id++, cmd, args);
    if (n < 0 || (size_t)n >= sizeof line) goto out;
    vpm_debug("-> %.*s", n - 1, line);
    if (queue(line, (size_t)n) != 0) {
      vpm_debug("output buffer full: %s dropped", cmd);
      goto out;
    }
    if (flush(deadline) >= 0) {
      rc = 0;
      goto out;
    }
    /* The daemon closed the connection since we last used it (it restarted):
     * a release goes once more, on a new connection. */
    if (mode != VPM_ONEWAY_HELD || fresh || attempt > 0) goto out;
    vpm_debug("control connection closed by the daemon: %s again on a new one", cmd);
  }
out:
  pthread_mutex_unlock(&ctl_lock);
  return rc;
}

int vpm_ctl_is_protected(int fd) {
  int yes = 0;
  if (fd < 0) return 0;
  /* Our own connection: taking ctl_lock here could wait for a whole request,
   * so the number is read without it and the identity is checked against the
   * socket itself instead. */
  if (__atomic_load_n(&ctl_fd, __ATOMIC_RELAXED) == fd && same_socket(fd, ctl_dev, ctl_ino))
    return 1;
  if (__atomic_load_n(&n_inherited, __ATOMIC_RELAXED) == 0) return 0;
  pthread_mutex_lock(&inherited_lock);
  for (unsigned i = 0; i < n_inherited; i++) {
    if (inherited[i].fd != fd) continue;
    if (same_socket(fd, inherited[i].dev, inherited[i].ino)) {
      yes = 1;
    } else {
      inherited[i] = inherited[--n_inherited];
    }
    break;
  }
  pthread_mutex_unlock(&inherited_lock);
  return yes;
}

void vpm_ctl_atfork_child(void) {
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_t fresh2 = PTHREAD_MUTEX_INITIALIZER;
  ctl_lock = fresh;
  inherited_lock = fresh2;
  if (ctl_fd >= 0) {
    if (n_inherited == MAX_INHERITED) {
      memmove(inherited, inherited + 1, sizeof inherited[0] * (MAX_INHERITED - 1));
      n_inherited--;
    }
    inherited[n_inherited].fd = ctl_fd;
    inherited[n_inherited].dev = ctl_dev;
    inherited[n_inherited].ino = ctl_ino;
    n_inherited++;
  }
  ctl_fd = -1; /* forgotten, not closed */
  rlen = 0;
  rdiscard = 0;
  wlen = 0;
  n_abandoned = 0;
  last_open_failure_ms = -1;
  last_report_timeout_ms = -1;
  /* The child's own connection holds nothing yet; the parent's releases are the parent's. */
  ever_connected = 0;
  n_held = 0;
}
