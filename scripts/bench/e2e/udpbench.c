/*
 * udpbench: the UDP loads of `npm run bench:e2e` (scripts/bench-e2e.ts), the UDP
 * twin of tcpbench.c.
 *
 *   udpbench server PORT [PORT...]
 *       One thread, epoll, one socket bound to 0.0.0.0:PORT for each PORT.
 *       Counts the blast datagrams of every run it sees, echoes every request,
 *       answers every query with the count of the run it names. Prints
 *       "listening" once every socket is bound.
 *   udpbench blast DST_ADDR DST_PORT SRC_ADDR SECONDS WARMUP_SECONDS SIZE
 *       One socket from SRC_ADDR (an ephemeral port), connected to DST; sends
 *       SIZE-byte datagrams as fast as it can, BATCH per sendmmsg(), for
 *       WARMUP_SECONDS (not counted: another run id) and then SECONDS; waits
 *       DRAIN_MS for what is still on its way, then asks the server (a query
 *       datagram on the same socket, so over the same path, retried on loss) how
 *       many of the measured run's datagrams it received.
 *   udpbench rr DST_ADDR DST_PORT SRC_ADDR SECONDS WARMUP_SECONDS SIZE
 *       One socket as above; in a loop: send a SIZE-byte request, wait for its
 *       echo (one outstanding request). A request without an answer within
 *       RR_TIMEOUT_MS is counted as an error and the next one is sent.
 *
 * Every datagram starts with a header (magic, kind, run id, sequence number), in
 * host byte order: both ends run on the same machine. A client prints one JSON
 * line on stdout. blast: sent (measured run), received (by the server, as it
 * reported), seconds (measured sending time), warmupSent, sendErrors (ENOBUFS),
 * queries (how many it took), batch (BATCH). rr: as tcpbench (transactions,
 * seconds, errors, lastError, latency percentiles in microseconds). Exit status:
 * 0 done, 1 failed (also: the server never answered the query), 2 bad arguments.
 *
 * Why C, and why sendmmsg: a node sender would measure its event loop (see
 * tcpbench.c); and one datagram per send() (iperf3 -u) costs the sender about
 * what forwarding the datagram costs the kernel. The sending CPU also does the
 * receive side's kernel work (a veth delivers on the CPU that sent), so on the
 * direct and DNAT paths sender and path share one CPU: BATCH datagrams per call
 * keep the sender's own share of it small. The server counts what it received,
 * the client what it sent: the difference is the path's loss.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE 1472
#define MAX_PORTS 16
#define BATCH 32
#define RECV_BATCH 64
#define RUNS 64
#define DRAIN_MS 300
#define QUERY_TIMEOUT_MS 200
#define QUERIES 25
#define RR_TIMEOUT_MS 50
#define MAGIC 0x55706d76u /* "vpmU" */

enum { K_BLAST = 'B', K_REQUEST = 'R', K_QUERY = 'Q', K_REPORT = 'P' };

struct hdr {
  uint32_t magic;
  uint32_t kind;
  uint32_t run;
  uint32_t pad;
  uint64_t seq;
  uint64_t count; /* K_REPORT: datagrams of `run` received */
};

static void die(const char *what) {
  fprintf(stderr, "udpbench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(const char *why) {
  fprintf(stderr,
          "udpbench: %s\n"
          "usage: udpbench server PORT [PORT...]\n"
          "       udpbench blast|rr DST_ADDR DST_PORT SRC_ADDR SECONDS WARMUP_SECONDS SIZE\n",
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

static void set_timeout(int fd, int ms) {
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) die("SO_RCVTIMEO");
}

/* ---------------------------------------------------------------- server */

/* The blast runs seen lately (the oldest forgotten first) and their counts. */
static struct {
  int used;
  uint32_t run;
  uint64_t count;
} runs[RUNS];
static int next_run;

static uint64_t *run_count(uint32_t run) {
  for (int i = 0; i < RUNS; i++)
    if (runs[i].used && runs[i].run == run) return &runs[i].count;
  int i = next_run;
  next_run = (next_run + 1) % RUNS;
  runs[i].used = 1;
  runs[i].run = run;
  runs[i].count = 0;
  return &runs[i].count;
}

static uint64_t run_lookup(uint32_t run) {
  for (int i = 0; i < RUNS; i++)
    if (runs[i].used && runs[i].run == run) return runs[i].count;
  return 0;
}

_Noreturn static void server(int nports, char **ports) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  for (int i = 0; i < nports; i++) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1, buf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Capped at net.core.rmem_max (not changed here): room for a burst, nothing more. */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)parse_port(ports[i]))};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
  }
  printf("listening\n");
  fflush(stdout);

  static char bufs[RECV_BATCH][MAX_SIZE + 64];
  static struct iovec iov[RECV_BATCH];
  static struct sockaddr_in from[RECV_BATCH];
  static struct mmsghdr msgs[RECV_BATCH];
  struct epoll_event evs[MAX_PORTS];
  for (;;) {
    int n = epoll_wait(ep, evs, MAX_PORTS, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int e = 0; e < n; e++) {
      int fd = evs[e].data.fd;
      for (;;) {
        for (int i = 0; i < RECV_BATCH; i++) {
          iov[i].iov_base = bufs[i];
          iov[i].iov_len = sizeof bufs[i];
          memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
          msgs[i].msg_hdr.msg_iov = &iov[i];
          msgs[i].msg_hdr.msg_iovlen = 1;
          msgs[i].msg_hdr.msg_name = &from[i];
          msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int got = recvmmsg(fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) break; /* EAGAIN: drained (anything else: try again on the next wake-up) */
        for (int i = 0; i < got; i++) {
          struct hdr *h = (struct hdr *)bufs[i];
          size_t len = msgs[i].msg_len;
          if (len < sizeof *h || h->magic != MAGIC) continue;
          if (h->kind == K_BLAST) {
            ++*run_count(h->run);
          } else if (h->kind == K_REQUEST) {
            sendto(fd, bufs[i], len, MSG_DONTWAIT, (struct sockaddr *)&from[i], msgs[i].msg_hdr.msg_namelen);
          } else if (h->kind == K_QUERY) {
            h->kind = K_REPORT;
            h->count = run_lookup(h->run);
            sendto(fd, bufs[i], sizeof *h, MSG_DONTWAIT, (struct sockaddr *)&from[i], msgs[i].msg_hdr.msg_namelen);
          }
        }
        if (got < RECV_BATCH) break;
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

/* A socket bound to SRC_ADDR (ephemeral port) and connected to DST. */
static int open_socket(const struct sockaddr_in *dst, const struct sockaddr_in *src) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  if (bind(fd, (const struct sockaddr *)src, sizeof *src) != 0) die("bind");
  if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) != 0) die("connect");
  return fd;
}

static uint32_t run_id(uint32_t salt) {
  return (uint32_t)(now_ns() ^ ((uint64_t)getpid() << 16)) * 2654435761u + salt;
}

static int blast(int fd, double seconds, double warmup, size_t size) {
  static char bufs[BATCH][MAX_SIZE];
  struct iovec iov[BATCH];
  struct mmsghdr msgs[BATCH];
  memset(bufs, 0xa5, sizeof bufs);
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = size;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  uint32_t warm_run = run_id(1), run = run_id(2);
  if (run == warm_run) run++;
  uint64_t sent = 0, warm_sent = 0, errors = 0, seq = 0;
  uint64_t start = now_ns();
  uint64_t t_measure = start + (uint64_t)(warmup * 1e9);
  uint64_t t_end = t_measure + (uint64_t)(seconds * 1e9);
  uint64_t t = start, t_first = 0;
  while (t < t_end) {
    int measuring = t >= t_measure;
    if (measuring && t_first == 0) t_first = t;
    for (int i = 0; i < BATCH; i++) {
      struct hdr *h = (struct hdr *)bufs[i];
      h->magic = MAGIC;
      h->kind = K_BLAST;
      h->run = measuring ? run : warm_run;
      h->seq = seq++;
    }
    int r = sendmmsg(fd, msgs, BATCH, 0);
    if (r > 0) {
      if (measuring) sent += (uint64_t)r;
      else warm_sent += (uint64_t)r;
    } else if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) {
      /* A full queue, or an ICMP error from an earlier datagram: sent and lost. */
      if (measuring) errors++;
    } else if (errno != EINTR) {
      die("sendmmsg");
    }
    t = now_ns();
  }
  double measured = (double)(t - (t_first ? t_first : t)) / 1e9;

  /* What is still queued on the way gets there (or is lost) first. */
  struct timespec drain = {.tv_sec = 0, .tv_nsec = DRAIN_MS * 1000000L};
  nanosleep(&drain, NULL);
  set_timeout(fd, QUERY_TIMEOUT_MS);
  struct hdr q = {.magic = MAGIC, .kind = K_QUERY, .run = run}, a;
  int queries = 0;
  long long received = -1;
  while (received < 0 && queries < QUERIES) {
    queries++;
    if (send(fd, &q, sizeof q, 0) < 0 && errno != ECONNREFUSED) die("send");
    for (;;) {
      ssize_t r = recv(fd, &a, sizeof a, 0);
      if (r < 0) break; /* timeout (or an ICMP error): ask again */
      if ((size_t)r == sizeof a && a.magic == MAGIC && a.kind == K_REPORT && a.run == run) {
        received = (long long)a.count;
        break;
      }
    }
  }
  printf("{\"mode\":\"blast\",\"sent\":%llu,\"received\":%lld,\"seconds\":%.6f,\"warmupSent\":%llu,"
         "\"sendErrors\":%llu,\"queries\":%d,\"batch\":%d}\n",
         (unsigned long long)sent, received, measured, (unsigned long long)warm_sent,
         (unsigned long long)errors, queries, BATCH);
  if (received < 0) {
    fprintf(stderr, "udpbench: the server did not answer %d queries\n", queries);
    return 1;
  }
  return 0;
}

static int rr(int fd, double seconds, double warmup, size_t size) {
  static char out[MAX_SIZE], in[MAX_SIZE];
  memset(out, 0xa5, sizeof out);
  set_timeout(fd, RR_TIMEOUT_MS);
  struct hdr *h = (struct hdr *)out;
  h->magic = MAGIC;
  h->kind = K_REQUEST;
  h->run = run_id(3);
  samples s = {0};
  uint64_t errors = 0, warm_done = 0, seq = 0;
  char last_error[128] = "";
  uint64_t start = now_ns();
  uint64_t t_measure = start + (uint64_t)(warmup * 1e9);
  uint64_t t_end = t_measure + (uint64_t)(seconds * 1e9);
  uint64_t t = start;
  while (t < t_end) {
    uint64_t t0 = t;
    h->seq = ++seq;
    int ok = 0;
    if (send(fd, out, size, 0) < 0) {
      snprintf(last_error, sizeof last_error, "send: %s", strerror(errno));
    } else {
      for (;;) {
        ssize_t r = recv(fd, in, sizeof in, 0);
        if (r < 0) {
          if (errno == EINTR) continue;
          snprintf(last_error, sizeof last_error, "%s",
                   errno == EAGAIN ? "no answer within the timeout" : strerror(errno));
          break;
        }
        const struct hdr *g = (const struct hdr *)in;
        /* A late answer to an earlier request is not this one's. */
        if ((size_t)r == size && g->magic == MAGIC && g->seq == seq) {
          ok = 1;
          break;
        }
      }
    }
    t = now_ns();
    if (t0 < t_measure) {
      warm_done++;
      continue;
    }
    if (ok) push(&s, t - t0);
    else errors++;
  }
  double measured = (double)(t - (t_measure > start ? t_measure : start)) / 1e9;
  qsort(s.v, s.n, sizeof *s.v, cmp_u32);
  double sum = 0;
  for (size_t i = 0; i < s.n; i++) sum += s.v[i];
  printf("{\"mode\":\"rr\",\"transactions\":%zu,\"seconds\":%.6f,\"warmupTransactions\":%llu,"
         "\"errors\":%llu,\"lastError\":\"%s\",\"meanUs\":%.3f,\"p50Us\":%.3f,\"p90Us\":%.3f,"
         "\"p99Us\":%.3f,\"maxUs\":%.3f}\n",
         s.n, measured, (unsigned long long)warm_done, (unsigned long long)errors, last_error,
         s.n ? sum / (double)s.n / 1000.0 : -1, pct_us(&s, 50), pct_us(&s, 90), pct_us(&s, 99),
         s.n ? s.v[s.n - 1] / 1000.0 : -1);
  free(s.v);
  return 0;
}

static int client(int is_blast, int argc, char **argv) {
  if (argc != 8) usage("wrong number of arguments");
  struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)parse_port(argv[3]))};
  struct sockaddr_in src = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) usage("bad DST_ADDR");
  if (inet_pton(AF_INET, argv[4], &src.sin_addr) != 1) usage("bad SRC_ADDR");
  double seconds = parse_seconds(argv[5]);
  double warmup = parse_seconds(argv[6]);
  char *end;
  long size = strtol(argv[7], &end, 10);
  if (*argv[7] == '\0' || *end != '\0' || size < (long)sizeof(struct hdr) || size > MAX_SIZE)
    usage("bad SIZE (it holds a 32-byte header, at most 1472)");
  int fd = open_socket(&dst, &src);
  int rc = is_blast ? blast(fd, seconds, warmup, (size_t)size) : rr(fd, seconds, warmup, (size_t)size);
  close(fd);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) usage("no mode given");
  if (strcmp(argv[1], "server") == 0) {
    if (argc < 3 || argc - 2 > MAX_PORTS) usage("one to 16 ports");
    server(argc - 2, argv + 2);
  }
  if (strcmp(argv[1], "blast") == 0) return client(1, argc, argv);
  if (strcmp(argv[1], "rr") == 0) return client(0, argc, argv);
  usage("unknown mode");
  return 2;
}
