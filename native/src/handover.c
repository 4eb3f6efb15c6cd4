/*
 * Handing a live file descriptor from one process to another (see handover.h).
 *
 * Theory of operation
 * -------------------
 * A single-queue TUN refuses a second TUNSETIFF with EBUSY while it is open, and
 * a TUN that is not persistent is deleted when its last fd closes: the only way
 * for a new process to take the device over without a gap in its existence is
 * to receive the open file itself. SCM_RIGHTS does that: the kernel holds a
 * reference to the file while it is in flight, so the device stays attached
 * through the sender's exit, and packets routed to it meanwhile wait in its
 * queue (up to txqueuelen) for whoever reads next.
 *
 * One handover is one connection to a unix stream socket:
 *
 *   receiver (new process)                 sender (old process)
 *   handoverListen(path)  ── socket at path, mode 0600, backlog 1
 *   handoverReceive(lfd, T) ─ poll ◄────── connect(path)      [bounded by T']
 *     accept4, SO_PEERCRED: uid 0 or ours   SO_PEERCRED of the listener: the same
 *     recvmsg: header, payload, 1 fd ◄──── sendmsg: header + payload + SCM_RIGHTS
 *     ack byte ──────────────────────────► wait for it, then return
 *     close; return { fd, meta }           (the caller closes its copy, exits)
 *
 * The message: a 12-byte header — "VPMH", the version (1), three reserved zero
 * bytes, the payload length as a little-endian u32 (at most
 * VPM_HANDOVER_MAX_META) — then the payload, UTF-8 text (JSON by convention; the
 * TS layer encodes and parses it). The fd rides on the first sendmsg, with the
 * header. The receiver reads until it has the header and the whole payload
 * (a stream may deliver it in pieces) and requires exactly one fd in all; it
 * refuses (ERR_HANDOVER_PROTOCOL) a bad magic or version, a payload too long or
 * not UTF-8, no fd or more than one (MSG_CTRUNC counts), a connection closed
 * early. Received fds get FD_CLOEXEC atomically (MSG_CMSG_CLOEXEC); refused ones
 * are closed.
 *
 * The ack (one byte, 0x06) is written only once the receiver has the fd and the
 * whole payload: a sender that returns without an error knows the file is in
 * the receiver's table. A sender that gives up first (ERR_HANDOVER_TIMEOUT while
 * waiting for the ack) cannot know whether the receiver took it; a receiver that
 * cannot write the ack (the sender is gone) closes the fd and fails, because
 * that sender will have reported a failure and may be serving on.
 *
 * Who may take part: the socket is created with mode 0600 (fchmod before bind)
 * so only its owner and root can connect, and each side checks the other's
 * SO_PEERCRED (the listener's credentials are those it had at listen()): uid 0
 * or this process's effective uid, else ERR_HANDOVER_PEER.
 *
 * Timeouts: handoverReceive blocks its caller (poll) for at most timeoutMs in
 * all, from waiting for the connection to the ack; handoverSend for at most its
 * timeoutMs, from connect (which waits while the listener's backlog is full) to
 * the ack. Both are control-plane calls made before serving (the receiver) or
 * after having stopped reading (the sender), never on the data plane.
 */
#define _GNU_SOURCE
#include "handover.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HDR_LEN 12
#define VERSION 1
#define ACK 0x06
/* Room for this many fds per recvmsg; more set MSG_CTRUNC. More than one is refused anyway. */
#define MAX_FDS_SEEN 8

static const uint8_t MAGIC[4] = {'V', 'P', 'M', 'H'};

/* ---------- errors ---------- */

typedef struct {
  const char *code;
  int err;
  const char *syscall;
  char msg[384];
} ho_error;

static int fail(ho_error *e, const char *code, int err, const char *syscall, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(ho_error *e, const char *code, int err, const char *syscall, const char *fmt, ...) {
  e->code = code;
  e->err = err;
  e->syscall = syscall;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  return -1;
}

static napi_value throw_ho(napi_env env, const ho_error *e) {
  napi_value c, m, err;
  napi_create_string_utf8(env, e->code, NAPI_AUTO_LENGTH, &c);
  napi_create_string_utf8(env, e->msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, c, m, &err);
  if (e->err) {
    napi_value n, s;
    napi_create_int32(env, e->err, &n);
    napi_set_named_property(env, err, "errno", n);
    napi_create_string_utf8(env, e->syscall, NAPI_AUTO_LENGTH, &s);
    napi_set_named_property(env, err, "syscall", s);
  }
  napi_throw(env, err);
  return NULL;
}

/* ---------- time ---------- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining(int64_t deadline) {
  int64_t left = deadline - now_ms();
  return left <= 0 ? 0 : left > 0x7fffffff ? 0x7fffffff : (int)left;
}

/* poll one fd until `events` or the deadline: 1 ready, 0 timed out, -1 errno. */
static int wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, remaining(deadline));
    if (r < 0 && errno == EINTR) continue;
    return r < 0 ? -1 : r;
  }
}

/* ---------- helpers ---------- */

/* Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF). */
static bool valid_utf8(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) {
      k = 1, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      k = 2, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      k = 3, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (n - i <= k) return false; /* fewer than k continuation bytes left */
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + j] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += k + 1;
  }
  return true;
}

static int fill_addr(struct sockaddr_un *sa, const char *path, ho_error *e) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  size_t len = strlen(path);
  if (len == 0 || len >= sizeof sa->sun_path)
    return fail(e, "ERR_HANDOVER_IO", ENAMETOOLONG, "bind",
                "handover socket path \"%.200s\" is %zu bytes; a unix socket path has 1 to %zu",
                path, len, sizeof sa->sun_path - 1);
  memcpy(sa->sun_path, path, len);
  return 0;
}

/* The path a listening socket is bound to, for messages. */
static void sock_path(int fd, char *out, size_t len) {
  struct sockaddr_un sa;
  socklen_t sl = sizeof sa;
  memset(&sa, 0, sizeof sa);
  if (getsockname(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_family == AF_UNIX &&
      sa.sun_path[0] != '\0')
    snprintf(out, len, "%.*s", (int)sizeof sa.sun_path, sa.sun_path);
  else
    snprintf(out, len, "fd %d", fd);
}

static bool peer_allowed(int c, struct ucred *uc, ho_error *e) {
  socklen_t l = sizeof *uc;
  if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, uc, &l) != 0) {
    fail(e, "ERR_HANDOVER_IO", errno, "getsockopt(SO_PEERCRED)",
         "cannot tell who is at the other end of the handover socket: %s", strerror(errno));
    return false;
  }
  e->code = NULL;
  return uc->uid == 0 || uc->uid == geteuid();
}

static void close_fds(int *fds, int n) {
  for (int i = 0; i < n; i++) close(fds[i]);
}

/*
 * Read exactly `len` bytes by the deadline, collecting any fds that come along
 * (beyond MAX_FDS_SEEN they are closed and counted). `what` names the part for
 * messages.
 */
typedef struct {
  int fds[MAX_FDS_SEEN];
  int nfds;      /* kept in fds[] */
  int extra;     /* beyond MAX_FDS_SEEN, closed */
  bool ctrunc;   /* the kernel dropped some (MSG_CTRUNC) */
} fd_bag;

static int recv_exact(int c, uint8_t *buf, size_t len, int64_t deadline, fd_bag *bag,
                      const char *path, int timeout_ms, const char *what, ho_error *e) {
  size_t got = 0;
  while (got < len) {
    int r = wait_fd(c, POLLIN, deadline);
    if (r < 0)
      return fail(e, "ERR_HANDOVER_IO", errno, "poll", "handover on %s: poll: %s", path,
                  strerror(errno));
    if (r == 0)
      return fail(e, "ERR_HANDOVER_TIMEOUT", 0, "",
                  "handover on %s: the sender sent %zu of the %zu bytes of the %s within %d ms",
                  path, got, len, what, timeout_ms);
    union {
      struct cmsghdr align;
      char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_SEEN)];
    } cbuf;
    struct iovec iov = {.iov_base = buf + got, .iov_len = len - got};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf,
                        .msg_controllen = sizeof cbuf.buf};
    ssize_t n = recvmsg(c, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      if (errno != ECONNRESET)
        return fail(e, "ERR_HANDOVER_IO", errno, "recvmsg", "handover on %s: recvmsg: %s", path,
                    strerror(errno));
      n = 0; /* reset: the same as closed, and no control data to look at */
      mh.msg_controllen = 0;
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
      if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
      int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      const unsigned char *data = CMSG_DATA(cm);
      for (int i = 0; i < k; i++) {
        int fd;
        memcpy(&fd, data + (size_t)i * sizeof(int), sizeof fd);
        if (bag->nfds < MAX_FDS_SEEN) {
          bag->fds[bag->nfds++] = fd;
        } else {
          close(fd);
          bag->extra++;
        }
      }
    }
    if (mh.msg_flags & MSG_CTRUNC) bag->ctrunc = true;
    if (n == 0)
      return fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
                  "handover on %s: the sender closed the connection after %zu of the %zu bytes "
                  "of the %s",
                  path, got, len, what);
    got += (size_t)n;
  }
  return 0;
}

/* ---------- the three steps ---------- */

static int ho_listen(const char *path, ho_error *e) {
  struct sockaddr_un sa;
  if (fill_addr(&sa, path, e) < 0) return -1;
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return fail(e, "ERR_HANDOVER_IO", EEXIST, "bind",
                  "cannot listen for a handover on %s: it exists and is not a socket (not removed)",
                  path);
    if (unlink(path) != 0 && errno != ENOENT)
      return fail(e, "ERR_HANDOVER_IO", errno, "unlink",
                  "cannot remove the stale socket %s: %s", path, strerror(errno));
  }
  /* Non-blocking, so that an accept after poll never waits for a peer that went away. */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return fail(e, "ERR_HANDOVER_IO", errno, "socket", "cannot create the handover socket: %s",
                strerror(errno));
  /* The socket inode's mode becomes the file's at bind (less the umask): 0600 from the start. */
  const char *sc = "fchmod";
  if (fchmod(fd, 0600) == 0) {
    sc = "bind";
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
      sc = "listen";
      if (listen(fd, 1) == 0) return fd;
    }
  }
  int err = errno;
  close(fd);
  return fail(e, "ERR_HANDOVER_IO", err, sc, "cannot listen for a handover on %s: %s failed: %s",
              path, sc, strerror(err));
}

static int ho_receive(int lfd, int timeout_ms, int *fd_out, uint8_t **meta_out, uint32_t *meta_len,
                      ho_error *e) {
  char path[128];
  sock_path(lfd, path, sizeof path);
  int64_t deadline = now_ms() + timeout_ms;
  int c;
  for (;;) {
    int r = wait_fd(lfd, POLLIN, deadline);
    if (r < 0)
      return fail(e, "ERR_HANDOVER_IO", errno, "poll", "handover on %s: poll: %s", path,
                  strerror(errno));
    if (r == 0)
      return fail(e, "ERR_HANDOVER_TIMEOUT", 0, "",
                  "no process handed over on %s within %d ms", path, timeout_ms);
    c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c >= 0) break;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
      continue;
    return fail(e, "ERR_HANDOVER_IO", errno, "accept4", "handover on %s: accept4: %s", path,
                strerror(errno));
  }

  struct ucred uc;
  if (!peer_allowed(c, &uc, e)) {
    close(c);
    if (e->code) return -1;
    return fail(e, "ERR_HANDOVER_PEER", 0, "",
                "refused a handover on %s from pid %d (uid %u): only root or uid %u may hand over",
                path, (int)uc.pid, (unsigned)uc.uid, (unsigned)geteuid());
  }

  fd_bag bag = {.nfds = 0};
  uint8_t hdr[HDR_LEN];
  uint8_t *meta = NULL;
  int rc = recv_exact(c, hdr, HDR_LEN, deadline, &bag, path, timeout_ms, "header", e);
  uint32_t len = 0;
  if (rc == 0) {
    len = (uint32_t)hdr[8] | (uint32_t)hdr[9] << 8 | (uint32_t)hdr[10] << 16 |
          (uint32_t)hdr[11] << 24;
    if (memcmp(hdr, MAGIC, 4) != 0)
      rc = fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
                "handover on %s from pid %d: not a vpm handover (magic %02x%02x%02x%02x)", path,
                (int)uc.pid, hdr[0], hdr[1], hdr[2], hdr[3]);
    else if (hdr[4] != VERSION || hdr[5] || hdr[6] || hdr[7])
      rc = fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
                "handover on %s from pid %d: version %u flags %02x%02x%02x, this vpm speaks "
                "version %u",
                path, (int)uc.pid, hdr[4], hdr[5], hdr[6], hdr[7], VERSION);
    else if (len > VPM_HANDOVER_MAX_META)
      rc = fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
                "handover on %s from pid %d: a payload of %u bytes, more than %u", path,
                (int)uc.pid, len, VPM_HANDOVER_MAX_META);
  }
  if (rc == 0) {
    meta = malloc((size_t)len + 1);
    if (!meta) rc = fail(e, "ERR_HANDOVER_IO", ENOMEM, "malloc", "handover: out of memory");
  }
  if (rc == 0) rc = recv_exact(c, meta, len, deadline, &bag, path, timeout_ms, "payload", e);
  if (rc == 0 && (bag.nfds + bag.extra != 1 || bag.ctrunc))
    rc = fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
              "handover on %s from pid %d: %d file descriptors%s, expected exactly one", path,
              (int)uc.pid, bag.nfds + bag.extra, bag.ctrunc ? " and more the kernel dropped" : "");
  if (rc == 0 && !valid_utf8(meta, len))
    rc = fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
              "handover on %s from pid %d: the payload is not UTF-8 text", path, (int)uc.pid);
  if (rc == 0) {
    uint8_t ack = ACK;
    ssize_t n;
    do n = send(c, &ack, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n != 1)
      rc = fail(e, "ERR_HANDOVER_PROTOCOL", n < 0 ? errno : 0, n < 0 ? "send" : "",
                "handover on %s from pid %d: the sender went away before the acknowledgement "
                "(%s); it will have reported a failure and may still be serving, so the fd "
                "received is closed",
                path, (int)uc.pid, n < 0 ? strerror(errno) : "short write");
  }
  close(c);
  if (rc != 0) {
    close_fds(bag.fds, bag.nfds);
    free(meta);
    return -1;
  }
  meta[len] = '\0';
  *fd_out = bag.fds[0];
  *meta_out = meta;
  *meta_len = len;
  return 0;
}

static int ho_send(const char *path, int fd, const uint8_t *meta, uint32_t len, int timeout_ms,
                   ho_error *e) {
  if (fcntl(fd, F_GETFD) < 0)
    return fail(e, "ERR_HANDOVER_IO", errno, "fcntl", "handoverSend: fd %d is not open (%s)", fd,
                strerror(errno));
  struct sockaddr_un sa;
  if (fill_addr(&sa, path, e) < 0) return -1;
  int64_t deadline = now_ms() + timeout_ms;
  int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0)
    return fail(e, "ERR_HANDOVER_IO", errno, "socket", "cannot create a socket: %s",
                strerror(errno));

  /* A unix connect waits (up to SO_SNDTIMEO) only while the listener's backlog is full. */
  int ms = remaining(deadline);
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  if (ms == 0) tv.tv_usec = 1000; /* 0 would mean no timeout at all */
  setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int r;
  do r = connect(c, (struct sockaddr *)&sa, sizeof sa);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno != EISCONN) {
    int err = errno;
    close(c);
    if (err == ENOENT || err == ECONNREFUSED)
      return fail(e, "ERR_HANDOVER_NO_LISTENER", err, "connect",
                  "cannot hand over to %s: nobody listens there (%s)", path, strerror(err));
    if (err == EAGAIN || err == EINPROGRESS || err == ETIMEDOUT)
      return fail(e, "ERR_HANDOVER_TIMEOUT", err, "connect",
                  "cannot hand over to %s: it did not take the connection within %d ms (its "
                  "backlog is full)",
                  path, timeout_ms);
    return fail(e, "ERR_HANDOVER_IO", err, "connect", "cannot hand over to %s: connect: %s", path,
                strerror(err));
  }

  struct ucred uc;
  if (!peer_allowed(c, &uc, e)) {
    close(c);
    if (e->code) return -1;
    return fail(e, "ERR_HANDOVER_PEER", 0, "",
                "not handing over to %s: it is listened on by pid %d (uid %u), not by root or "
                "uid %u",
                path, (int)uc.pid, (unsigned)uc.uid, (unsigned)geteuid());
  }

  uint8_t hdr[HDR_LEN] = {MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, 0, 0, 0,
                          (uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16),
                          (uint8_t)(len >> 24)};
  size_t total = HDR_LEN + (size_t)len, sent = 0;
  while (sent < total) {
    r = wait_fd(c, POLLOUT, deadline);
    if (r <= 0) {
      int err = errno;
      close(c);
      if (r < 0)
        return fail(e, "ERR_HANDOVER_IO", err, "poll", "handover to %s: poll: %s", path,
                    strerror(err));
      return fail(e, "ERR_HANDOVER_TIMEOUT", 0, "",
                  "handover to %s: the receiver took %zu of %zu bytes within %d ms", path, sent,
                  total, timeout_ms);
    }
    struct iovec iov[2];
    int niov = 0;
    if (sent < HDR_LEN) iov[niov++] = (struct iovec){hdr + sent, HDR_LEN - sent};
    size_t moff = sent < HDR_LEN ? 0 : sent - HDR_LEN;
    if (len > moff) iov[niov++] = (struct iovec){(void *)(meta + moff), len - moff};
    union {
      struct cmsghdr align;
      char buf[CMSG_SPACE(sizeof(int))];
    } cbuf;
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
    if (sent == 0) { /* the fd rides with the first byte */
      memset(&cbuf, 0, sizeof cbuf);
      mh.msg_control = cbuf.buf;
      mh.msg_controllen = sizeof cbuf.buf;
      struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    ssize_t n = sendmsg(c, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      int err = errno;
      if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK) continue;
      close(c);
      if (err == EPIPE || err == ECONNRESET)
        return fail(e, "ERR_HANDOVER_PROTOCOL", err, "sendmsg",
                    "handover to %s: the receiver closed the connection before taking the "
                    "message: it refused the handover (see its log)",
                    path);
      return fail(e, "ERR_HANDOVER_IO", err, "sendmsg", "handover to %s: sendmsg: %s", path,
                  strerror(err));
    }
    sent += (size_t)n;
  }

  /* The fd is in flight: only the ack says it has arrived. */
  for (;;) {
    r = wait_fd(c, POLLIN, deadline);
    if (r <= 0) {
      int err = errno;
      close(c);
      if (r < 0)
        return fail(e, "ERR_HANDOVER_IO", err, "poll", "handover to %s: poll: %s", path,
                    strerror(err));
      return fail(e, "ERR_HANDOVER_TIMEOUT", 0, "",
                  "handover to %s: no acknowledgement within %d ms; the receiver may or may not "
                  "have taken the fd",
                  path, timeout_ms);
    }
    uint8_t b = 0;
    ssize_t n = recv(c, &b, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    int err = n < 0 ? errno : 0;
    close(c);
    if (n == 1 && b == ACK) return 0;
    if (n < 0 && err != ECONNRESET)
      return fail(e, "ERR_HANDOVER_IO", err, "recv", "handover to %s: recv: %s", path,
                  strerror(err));
    if (n == 1)
      return fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
                  "handover to %s: the receiver answered 0x%02x, not the acknowledgement", path, b);
    return fail(e, "ERR_HANDOVER_PROTOCOL", 0, "",
                "handover to %s: the receiver closed the connection without acknowledging: it "
                "refused the handover (see its log)",
                path);
  }
}

/* ---------- N-API ---------- */

/* A non-negative int: an fd, or a timeout in ms. */
static bool arg_int(napi_env env, napi_value v, int *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return false;
  napi_get_value_double(env, v, &d);
  if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int)d) return false;
  *out = (int)d;
  return true;
}

/* A string argument as a malloc'd C string of at most `max` bytes; NULL after throwing. */
static char *arg_string(napi_env env, napi_value v, size_t max, const char *fn, const char *what,
                        size_t *len_out) {
  napi_valuetype t;
  size_t len = 0;
  char msg[160];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
    snprintf(msg, sizeof msg, "%s: %s must be a string", fn, what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
  }
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  if (len > max) {
    snprintf(msg, sizeof msg, "%s: %s is %zu bytes of UTF-8, at most %zu", fn, what, len, max);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return NULL;
  }
  char *buf = malloc(len + 1);
  if (!buf) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, v, buf, len + 1, &len);
  if (len_out) *len_out = len;
  return buf;
}

/* A path: a string without NUL bytes (the length limit is the socket address's, checked later). */
static char *arg_path(napi_env env, napi_value v, const char *fn) {
  size_t len = 0;
  char *p = arg_string(env, v, 4096, fn, "path", &len);
  if (p && strlen(p) != len) {
    free(p);
    char msg[128];
    snprintf(msg, sizeof msg, "%s: path contains a NUL byte", fn);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
  }
  return p;
}

napi_value vpm_js_handover_listen(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "handoverListen(path): expected 1 argument");
    return NULL;
  }
  char *path = arg_path(env, argv[0], "handoverListen");
  if (!path) return NULL;
  ho_error e;
  int fd = ho_listen(path, &e);
  free(path);
  if (fd < 0) return throw_ho(env, &e);
  napi_value r;
  napi_create_int32(env, fd, &r);
  return r;
}

napi_value vpm_js_handover_receive(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int lfd, timeout;
  if (argc < 2 || !arg_int(env, argv[0], &lfd)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "handoverReceive(listenFd, timeoutMs): listenFd must be a file descriptor");
    return NULL;
  }
  if (!arg_int(env, argv[1], &timeout)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                           "handoverReceive: timeoutMs must be an integer 0..2147483647");
    return NULL;
  }
  ho_error e;
  int fd = -1;
  uint8_t *meta = NULL;
  uint32_t len = 0;
  if (ho_receive(lfd, timeout, &fd, &meta, &len, &e) < 0) return throw_ho(env, &e);
  napi_value obj, fdv, mv;
  napi_create_object(env, &obj);
  napi_create_int32(env, fd, &fdv);
  napi_status s = napi_create_string_utf8(env, (const char *)meta, len, &mv);
  free(meta);
  if (s != napi_ok) {
    close(fd);
    napi_throw_error(env, NULL, "handoverReceive: cannot create the payload string");
    return NULL;
  }
  napi_set_named_property(env, obj, "fd", fdv);
  napi_set_named_property(env, obj, "meta", mv);
  return obj;
}

napi_value vpm_js_handover_send(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "handoverSend(path, fd, meta[, timeoutMs]): expected 3 or 4 arguments");
    return NULL;
  }
  int fd, timeout = VPM_HANDOVER_DEFAULT_TIMEOUT_MS;
  if (!arg_int(env, argv[1], &fd)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "handoverSend: fd must be a file descriptor");
    return NULL;
  }
  napi_valuetype t = napi_undefined;
  if (argc > 3) napi_typeof(env, argv[3], &t);
  if (t != napi_undefined && !arg_int(env, argv[3], &timeout)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                           "handoverSend: timeoutMs must be an integer 0..2147483647");
    return NULL;
  }
  char *path = arg_path(env, argv[0], "handoverSend");
  if (!path) return NULL;
  size_t len = 0;
  char *meta = arg_string(env, argv[2], VPM_HANDOVER_MAX_META, "handoverSend", "meta", &len);
  if (!meta) {
    free(path);
    return NULL;
  }
  ho_error e;
  int rc = ho_send(path, fd, (const uint8_t *)meta, (uint32_t)len, timeout, &e);
  free(path);
  free(meta);
  if (rc < 0) return throw_ho(env, &e);
  return NULL;
}

napi_value vpm_js_close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int fd;
  if (argc < 1 || !arg_int(env, argv[0], &fd)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "closeFd(fd): fd must be a file descriptor");
    return NULL;
  }
  /* Linux releases the fd even when close() reports EINTR or EIO: never retried. */
  if (close(fd) != 0 && errno == EBADF) {
    ho_error e;
    fail(&e, "ERR_HANDOVER_IO", EBADF, "close", "closeFd: fd %d is not open", fd);
    return throw_ho(env, &e);
  }
  return NULL;
}
