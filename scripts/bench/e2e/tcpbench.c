/*
 * tcpbench: the request/response load of `npm run bench:e2e` (scripts/bench-e2e.ts).
 *
 *   tcpbench server PORT
 *       Echo server on [::]:PORT (IPv4 too: IPV6_V6ONLY off): one thread, epoll; every byte a connection
 *       sends comes back; a connection is closed when the peer closes it.
 *       Prints "listening" once the socket accepts connections.
 *   tcpbench rr  DST_ADDR DST_PORT SRC_ADDR SECONDS WARMUP_SECONDS SIZE
 *       One connection from SRC_ADDR; in a loop: write SIZE bytes, read SIZE bytes
 *       back (one transaction). Latency of every transaction after the warm-up.
 *   tcpbench crr DST_ADDR DST_PORT SRC_ADDR SECONDS WARMUP_SECONDS SIZE
 *       In a loop: connect from SRC_ADDR (ephemeral port), one transaction, close.
 *       Latency from socket() to the last byte of the response.
 *
 * DST_ADDR and SRC_ADDR are both IPv4 or both IPv6 addresses.
 *
 * A client prints one JSON line on stdout: transactions (completed after the
 * warm-up), seconds (measured), errors, and latency percentiles in microseconds.
 * Exit status: 0 done, 1 failed, 2 bad arguments.
 *
 * Why C, not node `net`: a 64-byte round trip through the kernel costs ~15 µs
 * (67.5k transactions/s pinned to one CPU, the number); a node process
 * spends about that much per message in its event loop, on each side, so a node
 * client and server would measure themselves rather than the path between them.
 * Blocking sockets, TCP_NODELAY, no allocation in the loop; the client reads the
 * monotonic clock (vDSO) twice per transaction.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_SIZE 65536

static void die(const char *what) {
  fprintf(stderr, "tcpbench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(const char *why) {
  fprintf(stderr,
          "tcpbench: %s\n"
          "usage: tcpbench server PORT\n"
          "       tcpbench rr|crr DST_ADDR DST_PORT SRC_ADDR SECONDS WARMUP_SECONDS SIZE\n",
          why);
  exit(2);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int parse_port(const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 1 || v > 65535) usage("bad port");
  return (int)v;
}

static double parse_seconds(const char *s) {
  char *end;
  double v = strtod(s, &end);
  if (*s == '\0' || *end != '\0' || !(v >= 0) || v > 3600) usage("bad number of seconds");
  return v;
}

static void set_nodelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
}

/* ---------------------------------------------------------------- server */

_Noreturn static void server(int port) {
  /* The IPv6 wildcard with IPV6_V6ONLY off: one socket for both families. */
  int lfd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  int one = 1, zero = 0;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0) die("IPV6_V6ONLY");
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
  a.sin6_addr = in6addr_any;
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
  if (listen(lfd, 4096) != 0) die("listen");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) die("epoll_ctl");
  printf("listening\n");
  fflush(stdout);

  static char buf[MAX_SIZE];
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          /* Accepted sockets block: a write of a few bytes never waits in practice. */
          int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
          if (c < 0) break; /* EAGAIN: all taken; anything else: the peer gave up */
          set_nodelay(c);
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) != 0) close(c);
        }
        continue;
      }
      ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) {
        close(fd); /* also leaves the epoll set */
        continue;
      }
      for (ssize_t off = 0; off < r;) {
        ssize_t w = send(fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
        if (w < 0) {
          if (errno == EINTR) continue;
          break; /* reset by the peer: recv reports it next */
        }
        off += w;
      }
    }
  }
}

/* ---------------------------------------------------------------- clients */

typedef struct {
  uint32_t *v;
  size_t n, cap;
} samples;

static void push(samples *s, uint64_t ns) {
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 1 << 16;
    s->v = realloc(s->v, s->cap * sizeof *s->v);
    if (!s->v) die("realloc");
  }
  s->v[s->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples, in µs. */
static double pct_us(const samples *s, double p) {
  if (s->n == 0) return -1;
  size_t k = (size_t)(p / 100.0 * (double)s->n + 0.999999);
  if (k < 1) k = 1;
  if (k > s->n) k = s->n;
  return s->v[k - 1] / 1000.0;
}

/* Send all `len` bytes and read `len` back; 0 on success, -1 on an error or EOF. */
static int transact(int fd, const char *out, char *in, size_t len) {
  for (size_t off = 0; off < len;) {
    ssize_t w = send(fd, out + off, len - off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    off += (size_t)w;
  }
  for (size_t off = 0; off < len;) {
    ssize_t r = recv(fd, in + off, len - off, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    off += (size_t)r;
  }
  return 0;
}

/* An IPv4 or IPv6 socket address, by the text form of the address. */
typedef struct {
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
  } u;
  socklen_t len;
} endpoint;

static int parse_endpoint(const char *text, int port, endpoint *e) {
  memset(e, 0, sizeof *e);
  if (inet_pton(AF_INET, text, &e->u.in.sin_addr) == 1) {
    e->u.in.sin_family = AF_INET;
    e->u.in.sin_port = htons((uint16_t)port);
    e->len = sizeof e->u.in;
    return 0;
  }
  if (inet_pton(AF_INET6, text, &e->u.in6.sin6_addr) == 1) {
    e->u.in6.sin6_family = AF_INET6;
    e->u.in6.sin6_port = htons((uint16_t)port);
    e->len = sizeof e->u.in6;
    return 0;
  }
  return -1;
}

static int open_conn(const endpoint *dst, const endpoint *src) {
  int fd = socket(dst->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  /* Choose the port at connect(), where TIME_WAIT ports may be reused (tcp_tw_reuse);
     bind() alone would pick from ports without TIME_WAIT only and run out. */
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  if (bind(fd, &src->u.sa, src->len) != 0 || connect(fd, &dst->u.sa, dst->len) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  set_nodelay(fd);
  return fd;
}

static int client(int crr, int argc, char **argv) {
  if (argc != 8) usage("wrong number of arguments");
  endpoint dst, src;
  if (parse_endpoint(argv[2], parse_port(argv[3]), &dst) != 0) usage("bad DST_ADDR");
  if (parse_endpoint(argv[4], 0, &src) != 0) usage("bad SRC_ADDR");
  if (src.u.sa.sa_family != dst.u.sa.sa_family) usage("SRC_ADDR and DST_ADDR of different families");
  double seconds = parse_seconds(argv[5]);
  double warmup = parse_seconds(argv[6]);
  char *end;
  long size = strtol(argv[7], &end, 10);
  if (*argv[7] == '\0' || *end != '\0' || size < 1 || size > MAX_SIZE) usage("bad SIZE");

  static char out[MAX_SIZE], in[MAX_SIZE];
  memset(out, 0xa5, sizeof out);
  samples s = {0};
  uint64_t errors = 0, warm_done = 0;
  char last_error[128] = "";

  uint64_t start = now_ns();
  uint64_t t_measure = start + (uint64_t)(warmup * 1e9);
  uint64_t t_end = t_measure + (uint64_t)(seconds * 1e9);
  int fd = -1;
  if (!crr) {
    fd = open_conn(&dst, &src);
    if (fd < 0) die("connect");
  }
  uint64_t t = start;
  while (t < t_end) {
    uint64_t t0 = t;
    int ok;
    if (crr) {
      fd = open_conn(&dst, &src);
      ok = fd >= 0 && transact(fd, out, in, (size_t)size) == 0;
      if (!ok) snprintf(last_error, sizeof last_error, "%s", strerror(errno));
      if (fd >= 0) close(fd);
    } else {
      ok = transact(fd, out, in, (size_t)size) == 0;
      if (!ok) die("transaction");
    }
    t = now_ns();
    if (t0 < t_measure) {
      warm_done++;
      continue;
    }
    if (ok) push(&s, t - t0);
    else errors++;
  }
  if (!crr) close(fd);
  double measured = (double)(t - (t_measure > start ? t_measure : start)) / 1e9;

  qsort(s.v, s.n, sizeof *s.v, cmp_u32);
  double sum = 0;
  for (size_t i = 0; i < s.n; i++) sum += s.v[i];
  printf("{\"mode\":\"%s\",\"transactions\":%zu,\"seconds\":%.6f,\"warmupTransactions\":%llu,"
         "\"errors\":%llu,\"lastError\":\"%s\",\"meanUs\":%.3f,\"p50Us\":%.3f,\"p90Us\":%.3f,"
         "\"p99Us\":%.3f,\"maxUs\":%.3f}\n",
         crr ? "crr" : "rr", s.n, measured, (unsigned long long)warm_done,
         (unsigned long long)errors, last_error, s.n ? sum / (double)s.n / 1000.0 : -1,
         pct_us(&s, 50), pct_us(&s, 90), pct_us(&s, 99), s.n ? s.v[s.n - 1] / 1000.0 : -1);
  free(s.v);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) usage("no mode given");
  if (strcmp(argv[1], "server") == 0) {
    if (argc != 3) usage("wrong number of arguments");
    server(parse_port(argv[2]));
  }
  if (strcmp(argv[1], "rr") == 0) return client(0, argc, argv);
  if (strcmp(argv[1], "crr") == 0) return client(1, argc, argv);
  usage("unknown mode");
  return 2;
}
