/*
 * The virtual layer of vpm: bind / getsockname / connect / close, interposed
 * with LD_PRELOAD into a program that `vpm exec` starts.
 *
 * Theory of operation
 * -------------------
 * A program under vpm believes it listens on its usual port (the "virtual"
 * port, 9000); several copies of it, or several tenants' programs, all do. For
 * a port the daemon multiplexes (VPM_PORTS), bind() asks the daemon for a real
 * port from its pool for (AID, protocol, virtual port), sets SO_REUSEPORT (a
 * second process of the same AID gets the same real port, and the kernel must
 * let both listen), and binds the real port on the address the program asked
 * for. The socket is then remembered in a table, so that
 *
 *   getsockname()  reports the virtual port again (the program's own view and
 *                  its log lines stay "9000"),
 *   close()        tells the daemon the port is free ("release"),
 *
 * and connect() on a TCP socket is reported to the daemon (never changed), so
 * the daemon learns the AID of a local client's connection: before the SYN
 * leaves for a multiplexed port (a request, answered), after connect() for
 * any other port (one-way).
 *
 * Everything else passes through untouched, errno included: other families,
 * other ports, other protocols, addresses other than the wildcard and IPv4
 * (an IPv6 socket counts when it binds "::" or a v4-mapped address), and every
 * call when VPM_SOCKET or VPM_AID is not set.
 *
 * A socket's states in the table:
 *
 *   (absent) ──bind of a multiplexed port──► pending ──daemon granted a port,
 *      ▲                                       │        real bind succeeded──► bound
 *      └──daemon refused / real bind failed────┘                                │
 *      └──close() (release sent if this process bound it)───────────────────────┘
 *
 * A table entry whose descriptor was closed behind our back (close_range,
 * dup2 over it) is recognised by its real port: getsockname and bind check
 * that the kernel still has the socket bound to the port we recorded.
 *
 * fork(): the child inherits the table and the parent's registrations; it
 * marks the entries inherited (closing one in the child sends no release: the
 * registration is the parent's) and forgets the control connection for new
 * requests (control.c).
 *
 * Locks: table_lock guards the table and is only ever held for a lookup or an
 * update, never across a request to the daemon; control.c serialises requests
 * under its own lock. The hot pass-through paths (close, getsockname of an
 * ordinary socket) only read an atomic counter when nothing is bound.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

#define EXPORT __attribute__((visibility("default")))
#define MAX_PORTS 256
#define MAX_BOUND 1024
#define DEFAULT_TIMEOUT_MS 3000

struct vpm_real vpm_real;
int vpm_debug_on;
unsigned vpm_timeout_ms = DEFAULT_TIMEOUT_MS;
const char *vpm_socket_path = "";
char vpm_aid_json[512];

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int active;
static char socket_path[108];
static char aid_text[256];

static struct {
  char proto[4];
  unsigned port;
} ports[MAX_PORTS];
static unsigned n_ports;

struct bound {
  int fd;
  int pending;   /* asked the daemon, not bound yet */
  int inherited; /* bound by an ancestor before fork(): its registration, not ours */
  char proto[4];
  unsigned vport;
  unsigned port;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bound table[MAX_BOUND];
static unsigned n_bound; /* read without the lock (atomically) on the fast paths */

/* ---- messages ------------------------------------------------------------- */

static void say(const char *prefix, const char *fmt, va_list ap) {
  char buf[1024];
  int n = snprintf(buf, sizeof buf, "%s", prefix);
  if (n < 0) return;
  int m = vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
  if (m < 0) return;
  size_t len = (size_t)n + (size_t)m;
  if (len > sizeof buf - 2) len = sizeof buf - 2;
  buf[len++] = '\n';
  ssize_t w = write(STDERR_FILENO, buf, len);
  (void)w;
}

void vpm_debug(const char *fmt, ...) {
  if (!vpm_debug_on) return;
  int saved = errno;
  char prefix[32];
  snprintf(prefix, sizeof prefix, "vpm[%d]: ", (int)getpid());
  va_list ap;
  va_start(ap, fmt);
  say(prefix, fmt, ap);
  va_end(ap);
  errno = saved;
}

void vpm_error(const char *fmt, ...) {
  int saved = errno;
  va_list ap;
  va_start(ap, fmt);
  say("vpm: ", fmt, ap);
  va_end(ap);
  errno = saved;
}

static const char *errno_name(int e) {
  switch (e) {
  case EADDRINUSE: return "EADDRINUSE";
  case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
  case ENOBUFS: return "ENOBUFS";
  default: return "an error";
  }
}

/* ---- set-up --------------------------------------------------------------- */

static void parse_ports(const char *s) {
  const char *p = s;
  while (*p) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char item[32];
    char proto[8];
    unsigned port;
    char extra;
    if (len > 0 && len < sizeof item) {
      memcpy(item, p, len);
      item[len] = '\0';
      if (sscanf(item, " %7[a-z]:%u %c", proto, &port, &extra) == 2 &&
          (strcmp(proto, "tcp") == 0 || strcmp(proto, "udp") == 0) && port >= 1 &&
          port <= 65535) {
        if (n_ports < MAX_PORTS) {
          strcpy(ports[n_ports].proto, proto[0] == 't' ? "tcp" : "udp");
          ports[n_ports].port = port;
          n_ports++;
        }
      } else {
        vpm_error("VPM_PORTS: ignoring \"%s\" (want proto:port, e.g. tcp:9000)", item);
      }
    } else if (len > 0) {
      vpm_error("VPM_PORTS: ignoring an entry of %zu characters", len);
    }
    p += len;
    if (*p == ',') p++;
  }
}

static void atfork_prepare(void) { pthread_mutex_lock(&table_lock); }

static void atfork_parent(void) { pthread_mutex_unlock(&table_lock); }

static void atfork_child(void) {
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  for (unsigned i = 0; i < n_bound; i++) table[i].inherited = 1;
  table_lock = fresh;
  vpm_ctl_atfork_child();
}

static void init(void) {
  const char *v;

  vpm_real.bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
  vpm_real.connect =
      (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  vpm_real.getsockname =
      (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "getsockname");
  vpm_real.close = (int (*)(int))dlsym(RTLD_NEXT, "close");
  if (!vpm_real.bind || !vpm_real.connect || !vpm_real.getsockname || !vpm_real.close) {
    vpm_error("cannot find the C library's bind/connect/getsockname/close; not intercepting");
    return;
  }

  v = getenv("VPM_DEBUG");
  vpm_debug_on = v && *v && strcmp(v, "0") != 0;

  v = getenv("VPM_TIMEOUT_MS");
  if (v && *v) {
    char *end;
    unsigned long t = strtoul(v, &end, 10);
    if (*end == '\0' && t >= 1 && t <= 3600000 && v[0] != '-')
      vpm_timeout_ms = (unsigned)t;
    else
      vpm_error("VPM_TIMEOUT_MS=\"%s\" is not a number of ms in 1-3600000; using %d", v,
                DEFAULT_TIMEOUT_MS);
  }

  const char *sock = getenv("VPM_SOCKET");
  const char *aid = getenv("VPM_AID");
  if (!sock || !*sock || !aid || !*aid) {
    vpm_debug("VPM_SOCKET or VPM_AID not set: not intercepting");
    return;
  }
  if (strlen(sock) >= sizeof socket_path) {
    vpm_error("VPM_SOCKET is longer than %zu characters; not intercepting",
              sizeof socket_path - 1);
    return;
  }
  if (strlen(aid) >= sizeof aid_text || vpm_json_escape(vpm_aid_json, sizeof vpm_aid_json, aid) < 0) {
    vpm_error("VPM_AID is too long; not intercepting");
    return;
  }
  strcpy(socket_path, sock);
  strcpy(aid_text, aid);
  vpm_socket_path = socket_path;

  v = getenv("VPM_PORTS");
  if (v) parse_ports(v);

  if (pthread_atfork(atfork_prepare, atfork_parent, atfork_child) != 0) {
    vpm_error("pthread_atfork failed; not intercepting");
    return;
  }
  active = 1;
  if (vpm_debug_on) {
    char list[512];
    size_t n = 0;
    list[0] = '\0';
    for (unsigned i = 0; i < n_ports && n + 12 < sizeof list; i++)
      n += (size_t)snprintf(list + n, sizeof list - n, "%s%s:%u", i ? "," : "", ports[i].proto,
                            ports[i].port);
    vpm_debug("aid %s, socket %s, ports %s, timeout %u ms", aid_text, socket_path,
              n_ports ? list : "(none)", vpm_timeout_ms);
  }
}

static int ensure_init(void) {
  pthread_once(&once, init);
  return vpm_real.bind != NULL;
}

/* ---- the table ------------------------------------------------------------ */

static unsigned bound_count(void) { return __atomic_load_n(&n_bound, __ATOMIC_ACQUIRE); }

/* Under table_lock. */
static struct bound *find(int fd) {
  for (unsigned i = 0; i < n_bound; i++)
    if (table[i].fd == fd) return &table[i];
  return NULL;
}

/* Under table_lock. */
static void remove_entry(struct bound *b) {
  *b = table[n_bound - 1];
  __atomic_store_n(&n_bound, n_bound - 1, __ATOMIC_RELEASE);
}

static void send_release(const struct bound *b) {
  char args[768];
  int n = snprintf(args, sizeof args,
                   "{\"aid\":\"%s\",\"proto\":\"%s\",\"vport\":%u,\"port\":%u,\"pid\":%d,\"fd\":%d}",
                   vpm_aid_json, b->proto, b->vport, b->port, (int)getpid(), b->fd);
  if (n < 0 || (size_t)n >= sizeof args) return;
  vpm_debug("close fd %d: releasing %s port %u (virtual %u)", b->fd, b->proto, b->port, b->vport);
  /* Only on an open connection: without one the daemon holds nothing of ours. */
  vpm_ctl_oneway("release", args, 0);
}

/* ---- addresses ------------------------------------------------------------ */

/* What a bind or connect address is, for the daemon. */
struct target {
  int family;
  unsigned port;
  char addr[INET6_ADDRSTRLEN];
  int v6only_text; /* addr is an IPv6 text (not the wildcard "::" nor v4-mapped) */
};

static int read_addr(const struct sockaddr *sa, socklen_t len, struct target *t) {
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in in;
    memcpy(&in, sa, sizeof in);
    t->family = AF_INET;
    t->port = ntohs(in.sin_port);
    t->v6only_text = 0;
    inet_ntop(AF_INET, &in.sin_addr, t->addr, sizeof t->addr);
    return 1;
  }
  if (sa->sa_family == AF_INET6 && len >= 24 /* SIN6_LEN_RFC2133, as the kernel */) {
    struct sockaddr_in6 in6;
    memset(&in6, 0, sizeof in6);
    memcpy(&in6, sa, len < (socklen_t)sizeof in6 ? len : sizeof in6);
    t->family = AF_INET6;
    t->port = ntohs(in6.sin6_port);
    t->v6only_text = 0;
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
      inet_ntop(AF_INET, &in6.sin6_addr.s6_addr[12], t->addr, sizeof t->addr);
    } else if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
      strcpy(t->addr, "::");
    } else {
      inet_ntop(AF_INET6, &in6.sin6_addr, t->addr, sizeof t->addr);
      t->v6only_text = 1;
    }
    return 1;
  }
  return 0;
}

/* "tcp", "udp", or NULL for anything else (raw, SCTP, ping sockets, not a socket). */
static const char *socket_proto(int fd) {
  int type = 0, proto = 0;
  socklen_t l = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0) return NULL;
  l = sizeof proto;
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) != 0) return NULL;
  if (type == SOCK_STREAM && proto == IPPROTO_TCP) return "tcp";
  if (type == SOCK_DGRAM && proto == IPPROTO_UDP) return "udp";
  return NULL;
}

static int multiplexed(const char *proto, unsigned port) {
  for (unsigned i = 0; i < n_ports; i++)
    if (ports[i].port == port && strcmp(ports[i].proto, proto) == 0) return 1;
  return 0;
}

static int port_listed(unsigned port) {
  for (unsigned i = 0; i < n_ports; i++)
    if (ports[i].port == port) return 1;
  return 0;
}

/* The real port the kernel has bound fd to (0: none or not a socket). */
static unsigned real_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t l = sizeof ss;
  if (vpm_real.getsockname(fd, (struct sockaddr *)&ss, &l) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return 0;
}

/* ---- bind ----------------------------------------------------------------- */

static int bind_through_vpm(int fd, const struct sockaddr *addr, socklen_t len, const char *proto,
                            const struct target *t) {
  struct vpm_reply reply;
  struct bound *b;
  char args[1024];
  int e, one = 1;

  /* Already in the table: either really bound (the kernel will say EINVAL), or
   * a stale entry of a descriptor closed behind our back. */
  pthread_mutex_lock(&table_lock);
  b = find(fd);
  if (b && !b->pending && real_port(fd) == 0) {
    struct bound stale = *b;
    remove_entry(b);
    pthread_mutex_unlock(&table_lock);
    vpm_debug("fd %d: dropping a stale entry (%s port %u)", fd, stale.proto, stale.port);
    if (!stale.inherited) send_release(&stale);
    pthread_mutex_lock(&table_lock);
    b = find(fd);
  }
  if (b) {
    pthread_mutex_unlock(&table_lock);
    return vpm_real.bind(fd, addr, len);
  }
  if (n_bound == MAX_BOUND) {
    pthread_mutex_unlock(&table_lock);
    vpm_error("more than %d sockets bound through vpm in one process; bind of %s port %u fails "
              "with ENOBUFS",
              MAX_BOUND, proto, t->port);
    errno = ENOBUFS;
    return -1;
  }
  b = &table[n_bound];
  memset(b, 0, sizeof *b);
  b->fd = fd;
  b->pending = 1;
  snprintf(b->proto, sizeof b->proto, "%s", proto);
  b->vport = t->port;
  __atomic_store_n(&n_bound, n_bound + 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&table_lock);

  snprintf(args, sizeof args,
           "{\"aid\":\"%s\",\"proto\":\"%s\",\"vport\":%u,\"addr\":\"%s\",\"pid\":%d,\"fd\":%d}",
           vpm_aid_json, proto, t->port, t->addr, (int)getpid(), fd);
  struct vpm_bind_intent intent = {.proto = proto, .vport = t->port, .fd = fd};
  enum vpm_call_status st = vpm_ctl_call("bind", args, &reply, &intent, 0);
  if (st == VPM_CALL_ANSWER && reply.ok && reply.port == 0) {
    st = VPM_CALL_MALFORMED;
    snprintf(reply.message, sizeof reply.message,
             "malformed answer from the vpm daemon at %s: a bind result without a port",
             vpm_socket_path);
  }

  e = 0;
  if (st != VPM_CALL_ANSWER) {
    e = EADDRNOTAVAIL;
    vpm_error("%s; bind of %s %s:%u fails with %s", reply.message, proto, t->addr, t->port,
              errno_name(e));
  } else if (!reply.ok) {
    e = strcmp(reply.code, "ERR_PORTS_EXHAUSTED") == 0 ? EADDRINUSE : EADDRNOTAVAIL;
    vpm_error("%s (%s); bind of %s %s:%u fails with %s", reply.message, reply.code, proto,
              t->addr, t->port, errno_name(e));
  }

  if (e == 0) {
    /* The same AID in another process may hold the same real port: let both listen. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
      e = errno;
      vpm_error("setsockopt(SO_REUSEPORT) on fd %d: %s", fd, strerror(e));
    } else {
      union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
      } real;
      memset(&real, 0, sizeof real);
      memcpy(&real, addr, len < (socklen_t)sizeof real ? len : sizeof real);
      if (t->family == AF_INET)
        real.in.sin_port = htons((uint16_t)reply.port);
      else
        real.in6.sin6_port = htons((uint16_t)reply.port);
      if (vpm_real.bind(fd, &real.sa, len) != 0) e = errno;
    }
  }

  pthread_mutex_lock(&table_lock);
  b = find(fd);
  if (b && b->pending) {
    if (e == 0) {
      b->pending = 0;
      b->port = reply.port;
    } else {
      remove_entry(b);
    }
  }
  pthread_mutex_unlock(&table_lock);

  if (e != 0) {
    if (st == VPM_CALL_ANSWER && reply.ok) {
      /* The daemon gave us a port we could not bind: give it back. */
      struct bound back = {.fd = fd, .vport = t->port, .port = reply.port};
      snprintf(back.proto, sizeof back.proto, "%s", proto);
      vpm_debug("bind fd %d to %s:%u failed: %s", fd, t->addr, reply.port, strerror(e));
      send_release(&back);
    }
    errno = e;
    return -1;
  }
  vpm_debug("bind fd %d %s %s:%u -> real port %u", fd, proto, t->addr, t->port, reply.port);
  return 0;
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  int saved = errno;
  struct target t;
  const char *proto;

  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  if (!active || n_ports == 0 || addr == NULL || len < (socklen_t)sizeof(sa_family_t) ||
      !read_addr(addr, len, &t) || t.port == 0 || t.v6only_text || !port_listed(t.port) ||
      !(proto = socket_proto(fd)) || !multiplexed(proto, t.port)) {
    errno = saved;
    return vpm_real.bind(fd, addr, len);
  }
  int r = bind_through_vpm(fd, addr, len, proto, &t);
  if (r == 0) errno = saved;
  return r;
}

/* ---- getsockname ---------------------------------------------------------- */

EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len) {
  socklen_t cap;
  int r, saved;

  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  cap = len ? *len : 0;
  r = vpm_real.getsockname(fd, addr, len);
  if (r != 0 || !active || bound_count() == 0 || addr == NULL || cap < 4) return r;
  if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) return r;
  saved = errno;
  /* sin_port and sin6_port both sit at offset 2. */
  uint16_t nport;
  memcpy(&nport, (char *)addr + 2, 2);
  pthread_mutex_lock(&table_lock);
  struct bound *b = find(fd);
  if (b && !b->pending && b->port == ntohs(nport)) {
    nport = htons((uint16_t)b->vport);
    memcpy((char *)addr + 2, &nport, 2);
  }
  pthread_mutex_unlock(&table_lock);
  errno = saved;
  return r;
}

/* ---- connect -------------------------------------------------------------- */

/* "a.b.c.d:port" for the daemon (an IPv4 daemon): the wildcard of either
 * family is 0.0.0.0, a v4-mapped address is its IPv4 address; 0 for an IPv6
 * address, which the daemon has nothing to do with. */
static int endpoint(char *out, size_t cap, const struct target *t) {
  if (t->v6only_text) return 0;
  snprintf(out, cap, "%s:%u", strcmp(t->addr, "::") == 0 ? "0.0.0.0" : t->addr, t->port);
  return 1;
}

static int local_target(int fd, struct target *local) {
  struct sockaddr_storage ss;
  socklen_t l = sizeof ss;
  return vpm_real.getsockname(fd, (struct sockaddr *)&ss, &l) == 0 &&
         read_addr((struct sockaddr *)&ss, l, local);
}

static int connect_args(char *args, size_t cap, const struct target *local,
                        const struct target *remote) {
  char lo[INET6_ADDRSTRLEN + 8], r[INET6_ADDRSTRLEN + 8];
  if (!endpoint(lo, sizeof lo, local) || !endpoint(r, sizeof r, remote)) return 0;
  int n = snprintf(args, cap,
                   "{\"aid\":\"%s\",\"proto\":\"tcp\",\"local\":\"%s\",\"remote\":\"%s\",\"pid\":%d}",
                   vpm_aid_json, lo, r, (int)getpid());
  return n > 0 && (size_t)n < cap;
}

/*
 * Before a TCP connect() to a multiplexed port: the daemon must know the
 * AID of this connection before its SYN reaches it (a local client goes to
 * the instance of its own AID). The SYN leaves inside connect(), so the
 * socket gets its local port first (a bind to the wildcard, port 0, which
 * is what connect() would pick anyway), the daemon is told which AID that
 * port belongs to, and connect() goes ahead when it has answered. Whatever
 * happens here, the connect() itself is never changed or refused.
 */
static void announce_connect(int fd, const struct target *remote) {
  struct target local;
  struct vpm_reply reply;
  char args[1024];

  /* Only once, before the first connect(): not when a program calls connect()
   * again on a non-blocking socket to see how it is going. */
  struct tcp_info ti;
  socklen_t til = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &til) != 0 || ti.tcpi_state != TCP_CLOSE) return;
  if (!local_target(fd, &local)) return;
  if (local.port == 0) {
    union {
      struct sockaddr sa;
      struct sockaddr_in in;
      struct sockaddr_in6 in6;
    } any;
    socklen_t l;
    memset(&any, 0, sizeof any);
    if (local.family == AF_INET) {
      any.in.sin_family = AF_INET;
      any.in.sin_addr.s_addr = htonl(INADDR_ANY);
      l = sizeof any.in;
    } else {
      any.in6.sin6_family = AF_INET6;
      any.in6.sin6_addr = in6addr_any;
      l = sizeof any.in6;
    }
    if (vpm_real.bind(fd, &any.sa, l) != 0 || !local_target(fd, &local)) {
      vpm_debug("connect fd %d: could not choose a local port first (%s); not announced", fd,
                strerror(errno));
      return;
    }
  }
  if (!connect_args(args, sizeof args, &local, remote)) return;
  vpm_debug("connect fd %d to multiplexed port %u: announcing it first", fd, remote->port);
  enum vpm_call_status st = vpm_ctl_call("connect", args, &reply, NULL, 1);
  if (st != VPM_CALL_ANSWER)
    vpm_debug("connect fd %d: not announced: %s", fd, reply.message);
  else if (!reply.ok)
    vpm_debug("connect fd %d: the daemon refused the announcement: %s (%s)", fd, reply.message,
              reply.code);
}

/* After a TCP connect() to any other port: a one-way report. */
static void report_connect(int fd, const struct target *remote) {
  struct target local;
  char args[1024];
  if (!local_target(fd, &local) || !connect_args(args, sizeof args, &local, remote)) return;
  vpm_debug("connect fd %d: reporting", fd);
  vpm_ctl_oneway("connect", args, 1);
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  int saved = errno, announced = 0;
  struct target remote;
  const char *proto = NULL;

  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  int ours = active && addr != NULL && len >= (socklen_t)sizeof(sa_family_t) &&
             read_addr(addr, len, &remote) && !remote.v6only_text && remote.port != 0 &&
             (proto = socket_proto(fd)) != NULL && strcmp(proto, "tcp") == 0;
  if (ours && multiplexed("tcp", remote.port)) {
    announce_connect(fd, &remote);
    announced = 1;
  }
  errno = saved;
  int r = vpm_real.connect(fd, addr, len);
  if (!ours || announced) return r;
  int e = errno;
  if (r == 0 || e == EINPROGRESS) report_connect(fd, &remote);
  errno = e;
  return r;
}

/* ---- close ---------------------------------------------------------------- */

EXPORT int close(int fd) {
  struct bound gone;
  int had = 0;

  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  if (active && vpm_ctl_is_protected(fd)) {
    /* Our control connection: closing it would hand back every port this
     * process (or its parent) holds. Pretend, and keep it. */
    vpm_debug("close(%d): that is vpm's control connection; left open", fd);
    return 0;
  }
  if (active && bound_count() > 0) {
    pthread_mutex_lock(&table_lock);
    struct bound *b = find(fd);
    if (b) {
      gone = *b;
      had = 1;
      remove_entry(b);
    }
    pthread_mutex_unlock(&table_lock);
  }
  int r = vpm_real.close(fd);
  if (had && !gone.pending && !gone.inherited) {
    int e = errno;
    send_release(&gone);
    errno = e;
  } else if (had && gone.inherited) {
    vpm_debug("close fd %d: inherited %s port %u; the parent's registration stays", fd,
              gone.proto, gone.port);
  }
  return r;
}
