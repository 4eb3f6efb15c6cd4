/*
 * The virtual layer of vpm: bind / getsockname / connect / close, and for UDP
 * sendto / sendmsg / sendmmsg / socket, interposed with LD_PRELOAD into a
 * program that `vpm exec` starts.
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
 *   close()        tells the daemon the port is free ("release"; also a
 *                  daemon that restarted since, on a new connection: control.c),
 *
 * and connect() on a TCP socket is reported to the daemon (never changed), so
 * the daemon learns the AID of a local client's connection: before the SYN
 * leaves for a multiplexed port (a request, answered), after connect() for
 * any other port (one-way).
 *
 * UDP sockets are bound the same way (bind of a multiplexed UDP port: a pool
 * port, SO_REUSEPORT, getsockname says the virtual port, close releases). A
 * UDP socket is a client of a multiplexed UDP port when it sends a datagram to
 * one (sendto, sendmsg, sendmmsg with a destination) or connects to one. Its
 * datagram leaves inside that call, and the daemon classifies the flow on its
 * first datagram, so the report comes first: the socket gets its local port
 * (a bind to the wildcard, port 0, if it has none: what the kernel's autobind
 * would pick), the daemon is told that local address:port is this AID's (a
 * request: the call waits for the answer), and only then does the datagram go.
 * connect() sends nothing, so it reports after the real connect() succeeded,
 * with the address the kernel chose, and returns when the daemon has answered:
 * a send() after it finds the report in place. Once per socket: the daemon
 * keys the report by the socket's local address:port, which every datagram
 * of that socket carries whatever its destination, so a record per descriptor
 * (udp_seen, the port it was reported with) makes every later datagram, to
 * any service, one array read. The record ends at close() (which tells the
 * daemon, "release" of pid and fd, so that the port's next owner is not taken
 * for this AID), when socket() hands out the same number again (the old
 * descriptor was closed behind our back), and when a connect(AF_UNSPEC)
 * leaves the socket on another port (or none).
 *
 * Families. The library handles AF_INET and AF_INET6 sockets alike, and tells
 * the daemon which family a bind is for, so that the instance it registers
 * serves exactly the clients the kernel will hand the socket:
 *
 *   AF_INET "0.0.0.0"            IPv4 (the TUN's IPv4 address)
 *   AF_INET6 "::"                both families: IPv6 and, through v4-mapped
 *                                addresses, IPv4 ("addr":"::")
 *   AF_INET6 "::", IPV6_V6ONLY   IPv6 only ("addr":"::","v6only":true; the
 *                                option must be set before bind, so bind reads it)
 *   AF_INET6 ::ffff:a.b.c.d      IPv4 only: that address, sent as "a.b.c.d"
 *   AF_INET6 other address       IPv6 only: that address
 *
 * getsockname reads the port at offset 2, where sockaddr_in and sockaddr_in6
 * both keep it, so it reports the virtual port for every one of them. A
 * connect report names the socket's local address as the kernel has it:
 * "a.b.c.d:port" (also for a v4-mapped address), "[v6]:port" for an IPv6 one,
 * "[::]:port" / "0.0.0.0:port" when no address is chosen yet (the daemon then
 * keys the report by the port alone).
 *
 * Everything else passes through untouched, errno included: other families,
 * other ports, other protocols, and every call when VPM_SOCKET or VPM_AID is
 * not set.
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
 * ordinary socket) only read an atomic counter when nothing is bound; a
 * datagram's destination port is one bit test (udp_port_bits), and a datagram
 * of a socket already reported one atomic read (udp_seen); neither takes a
 * lock, makes a system call or allocates.
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

/* The multiplexed UDP ports, one bit each: the test every datagram makes. */
static uint32_t udp_port_bits[65536 / 32];
static int udp_ports; /* any at all */

/*
 * UDP sockets reported as clients, by descriptor: the local port they were
 * reported with (bits 0-15) | UDP_REPORTED, | UDP_INHERITED when an ancestor
 * reported it before fork() (its report, tied to the ancestor's control
 * connection, which the inherited descriptor keeps open). 0: not reported.
 * Descriptors from UDP_SEEN_MAX up have no record: each datagram of theirs to
 * a multiplexed port is reported again. Read and written atomically; entries
 * are untouched zero pages until used. udp_seen_hi bounds the used part, so
 * that fork() marks only that.
 */
#define UDP_SEEN_MAX 65536
#define UDP_REPORTED 0x10000u
#define UDP_INHERITED 0x20000u
static uint32_t udp_seen[UDP_SEEN_MAX];
static int udp_seen_hi;

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
  case EACCES: return "EACCES";
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
          if (proto[0] == 'u') {
            udp_port_bits[port >> 5] |= 1u << (port & 31);
            udp_ports = 1;
          }
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
  int hi = __atomic_load_n(&udp_seen_hi, __ATOMIC_RELAXED);
  for (int fd = 0; fd < hi; fd++)
    if (udp_seen[fd] != 0) udp_seen[fd] |= UDP_INHERITED;
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
  vpm_real.socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
  vpm_real.sendto = (ssize_t(*)(int, const void *, size_t, int, const struct sockaddr *,
                                socklen_t))dlsym(RTLD_NEXT, "sendto");
  vpm_real.sendmsg = (ssize_t(*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
  vpm_real.sendmmsg =
      (int (*)(int, struct mmsghdr *, unsigned int, int))dlsym(RTLD_NEXT, "sendmmsg");
  if (!vpm_real.bind || !vpm_real.connect || !vpm_real.getsockname || !vpm_real.close ||
      !vpm_real.socket || !vpm_real.sendto || !vpm_real.sendmsg || !vpm_real.sendmmsg) {
    vpm_error("cannot find the C library's bind/connect/getsockname/close/socket/sendto/sendmsg/"
              "sendmmsg; not intercepting");
    vpm_real.bind = NULL;
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

/* A refusal of the daemon's access policy: the program's user may not do this. */
static int denied_code(const char *code) {
  return strcmp(code, "ERR_AID_DENIED") == 0 || strcmp(code, "ERR_CONTROL_DENIED") == 0 ||
         strcmp(code, "ERR_PID_MISMATCH") == 0;
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
  /* Also after a daemon restart, on a new connection (VPM_ONEWAY_HELD). */
  vpm_ctl_oneway("release", args, VPM_ONEWAY_HELD);
}

/* ---- addresses ------------------------------------------------------------ */

/* What a bind or connect address is, for the daemon. */
struct target {
  int family;
  unsigned port;
  char addr[INET6_ADDRSTRLEN];
  int v6_text; /* addr is an IPv6 text ("::" or another IPv6 address, not v4-mapped) */
};

static int read_addr(const struct sockaddr *sa, socklen_t len, struct target *t) {
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in in;
    memcpy(&in, sa, sizeof in);
    t->family = AF_INET;
    t->port = ntohs(in.sin_port);
    t->v6_text = 0;
    inet_ntop(AF_INET, &in.sin_addr, t->addr, sizeof t->addr);
    return 1;
  }
  if (sa->sa_family == AF_INET6 && len >= 24 /* SIN6_LEN_RFC2133, as the kernel */) {
    struct sockaddr_in6 in6;
    memset(&in6, 0, sizeof in6);
    memcpy(&in6, sa, len < (socklen_t)sizeof in6 ? len : sizeof in6);
    t->family = AF_INET6;
    t->port = ntohs(in6.sin6_port);
    t->v6_text = 1;
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
      /* An IPv4 address in IPv6 clothing: the socket talks IPv4 with it. */
      inet_ntop(AF_INET, &in6.sin6_addr.s6_addr[12], t->addr, sizeof t->addr);
      t->v6_text = 0;
    } else if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
      strcpy(t->addr, "::");
    } else {
      inet_ntop(AF_INET6, &in6.sin6_addr, t->addr, sizeof t->addr);
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

static int endpoint(char *out, size_t cap, const struct target *t);

static int bind_through_vpm(int fd, const struct sockaddr *addr, socklen_t len, const char *proto,
                            const struct target *t) {
  struct vpm_reply reply;
  struct bound *b;
  char args[1024], ep[INET6_ADDRSTRLEN + 8];
  int e, one = 1;

  if (!endpoint(ep, sizeof ep, t)) ep[0] = '\0';

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

  /* "::" on a socket with IPV6_V6ONLY set serves IPv6 only; without it, both. */
  int v6only = 0;
  if (t->family == AF_INET6 && strcmp(t->addr, "::") == 0) {
    socklen_t ol = sizeof v6only;
    if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &ol) != 0) v6only = 0;
  }
  snprintf(args, sizeof args,
           "{\"aid\":\"%s\",\"proto\":\"%s\",\"vport\":%u,\"addr\":\"%s\"%s,\"pid\":%d,\"fd\":%d}",
           vpm_aid_json, proto, t->port, t->addr, v6only ? ",\"v6only\":true" : "",
           (int)getpid(), fd);
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
    vpm_error("%s; bind of %s %s fails with %s", reply.message, proto, ep,
              errno_name(e));
  } else if (!reply.ok) {
    /* Refused by the daemon's access policy (docs/security.md): EACCES, as a
     * privileged port refuses an unprivileged program. */
    e = strcmp(reply.code, "ERR_PORTS_EXHAUSTED") == 0 ? EADDRINUSE
        : denied_code(reply.code)                     ? EACCES
                                                      : EADDRNOTAVAIL;
    vpm_error("%s (%s); bind of %s %s fails with %s", reply.message, reply.code, proto, ep,
              errno_name(e));
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
      vpm_debug("bind fd %d %s (real port %u) failed: %s", fd, ep, reply.port, strerror(e));
      send_release(&back);
    }
    errno = e;
    return -1;
  }
  vpm_debug("bind fd %d %s %s -> real port %u", fd, proto, ep, reply.port);
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
      !read_addr(addr, len, &t) || t.port == 0 || !port_listed(t.port) ||
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

/* "a.b.c.d:port" or "[v6]:port" for the daemon (a v4-mapped address is its
 * IPv4 address, read_addr's text); 0 if it does not fit. */
static int endpoint(char *out, size_t cap, const struct target *t) {
  int n = t->v6_text ? snprintf(out, cap, "[%s]:%u", t->addr, t->port)
                     : snprintf(out, cap, "%s:%u", t->addr, t->port);
  return n > 0 && (size_t)n < cap;
}

static int local_target(int fd, struct target *local) {
  struct sockaddr_storage ss;
  socklen_t l = sizeof ss;
  return vpm_real.getsockname(fd, (struct sockaddr *)&ss, &l) == 0 &&
         read_addr((struct sockaddr *)&ss, l, local);
}

/* Give a socket without a local port one: a bind to the wildcard of its
 * family, port 0 (what connect() or a first sendto() would pick anyway), and
 * read back what the kernel chose. 1 on success; errno set otherwise. */
static int bind_any(int fd, struct target *local) {
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
  } any;
  socklen_t l;
  memset(&any, 0, sizeof any);
  if (local->family == AF_INET) {
    any.in.sin_family = AF_INET;
    any.in.sin_addr.s_addr = htonl(INADDR_ANY);
    l = sizeof any.in;
  } else {
    any.in6.sin6_family = AF_INET6;
    any.in6.sin6_addr = in6addr_any;
    l = sizeof any.in6;
  }
  return vpm_real.bind(fd, &any.sa, l) == 0 && local_target(fd, local) && local->port != 0;
}

/* The args of a "connect" report; fd >= 0 adds the socket's descriptor (UDP:
 * the report lives until the release of this pid and fd). */
static int connect_args(char *args, size_t cap, const char *proto, const struct target *local,
                        const struct target *remote, int fd) {
  char lo[INET6_ADDRSTRLEN + 8], r[INET6_ADDRSTRLEN + 8], fdtext[24] = "";
  if (!endpoint(lo, sizeof lo, local) || !endpoint(r, sizeof r, remote)) return 0;
  if (fd >= 0) snprintf(fdtext, sizeof fdtext, ",\"fd\":%d", fd);
  int n = snprintf(args, cap,
                   "{\"aid\":\"%s\",\"proto\":\"%s\",\"local\":\"%s\",\"remote\":\"%s\",\"pid\":%d%s}",
                   vpm_aid_json, proto, lo, r, (int)getpid(), fdtext);
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
  if (local.port == 0 && !bind_any(fd, &local)) {
    vpm_debug("connect fd %d: could not choose a local port first (%s); not announced", fd,
              strerror(errno));
    return;
  }
  if (!connect_args(args, sizeof args, "tcp", &local, remote, -1)) return;
  vpm_debug("connect fd %d to multiplexed port %u: announcing it first", fd, remote->port);
  enum vpm_call_status st = vpm_ctl_call("connect", args, &reply, NULL, 1);
  if (st != VPM_CALL_ANSWER)
    vpm_debug("connect fd %d: not announced: %s", fd, reply.message);
  else if (!reply.ok && denied_code(reply.code))
    vpm_error("%s (%s); connect fd %d goes ahead without an AID", reply.message, reply.code, fd);
  else if (!reply.ok)
    vpm_debug("connect fd %d: the daemon refused the announcement: %s (%s)", fd, reply.message,
              reply.code);
}

/* After a TCP connect() to any other port: a one-way report. */
static void report_connect(int fd, const struct target *remote) {
  struct target local;
  char args[1024];
  if (!local_target(fd, &local) || !connect_args(args, sizeof args, "tcp", &local, remote, -1))
    return;
  vpm_debug("connect fd %d: reporting", fd);
  vpm_ctl_oneway("connect", args, VPM_ONEWAY_OPEN);
}

/* ---- UDP clients ---------------------------------------------------------- */

/* The destination port of a datagram is a multiplexed UDP port: one bit test,
 * no system call (every datagram of the program passes here). */
static int udp_dest_multiplexed(const struct sockaddr *sa, socklen_t len) {
  uint16_t nport;
  if (sa == NULL || len < (socklen_t)sizeof(struct sockaddr_in)) return 0;
  if (sa->sa_family != AF_INET && (sa->sa_family != AF_INET6 || len < 24)) return 0;
  memcpy(&nport, (const char *)sa + 2, 2); /* sin_port and sin6_port both sit at offset 2 */
  unsigned port = ntohs(nport);
  return (udp_port_bits[port >> 5] >> (port & 31)) & 1u;
}

/* The record of fd (0: none, or fd has no room in the array). */
static uint32_t udp_record(int fd) {
  return fd >= 0 && fd < UDP_SEEN_MAX ? __atomic_load_n(&udp_seen[fd], __ATOMIC_ACQUIRE) : 0;
}

static void udp_set_record(int fd, uint32_t v) {
  if (fd < 0 || fd >= UDP_SEEN_MAX) return;
  __atomic_store_n(&udp_seen[fd], v, __ATOMIC_RELEASE);
  int hi = __atomic_load_n(&udp_seen_hi, __ATOMIC_RELAXED);
  while (fd >= hi &&
         !__atomic_compare_exchange_n(&udp_seen_hi, &hi, fd + 1, 1, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
}

/* Take fd's record away (0 if it had none). */
static uint32_t udp_take_record(int fd) {
  if (fd < 0 || fd >= UDP_SEEN_MAX) return 0;
  if (__atomic_load_n(&udp_seen[fd], __ATOMIC_RELAXED) == 0) return 0;
  return __atomic_exchange_n(&udp_seen[fd], 0, __ATOMIC_ACQ_REL);
}

/* The daemon may forget the reports of this socket (pid, fd): one-way, as a
 * bound port's release (VPM_ONEWAY_HELD: also to a restarted daemon). */
static void udp_forget(int fd, uint32_t record, const char *why) {
  char args[256];
  if (record & UDP_INHERITED) {
    vpm_debug("fd %d: %s; the UDP report of port %u is the parent's and stays", fd, why,
              record & 0xffffu);
    return;
  }
  int n = snprintf(args, sizeof args, "{\"aid\":\"%s\",\"proto\":\"udp\",\"pid\":%d,\"fd\":%d}",
                   vpm_aid_json, (int)getpid(), fd);
  if (n < 0 || (size_t)n >= sizeof args) return;
  vpm_debug("fd %d: %s; ending the UDP report of port %u", fd, why, record & 0xffffu);
  vpm_ctl_oneway("release", args, VPM_ONEWAY_HELD);
}

/*
 * A UDP socket is about to send to (or has connected to) the multiplexed port
 * of `dest`: unless this socket was reported already, give it a local port
 * (a wildcard bind, port 0, if it has none) and tell the daemon its AID (a
 * request: the datagram goes only after the answer, or after the timeout).
 * Never changes what the program's call does; errno is the caller's to keep.
 * `connected`: after a successful connect(), which may have changed the local
 * address (not the port): report if the record's port is not the socket's.
 */
static void udp_report(int fd, const struct sockaddr *dest, socklen_t len, int connected) {
  struct target remote, local;
  struct vpm_reply reply;
  char args[1024];
  uint32_t rec = udp_record(fd);

  if (!read_addr(dest, len, &remote) || remote.port == 0) return;
  const char *proto = socket_proto(fd);
  if (proto == NULL || strcmp(proto, "udp") != 0) return;
  if (!local_target(fd, &local)) return;
  if (connected && rec != 0 && (rec & 0xffffu) == local.port) return;
  if (local.port == 0 && !bind_any(fd, &local)) {
    vpm_debug("udp fd %d: could not choose a local port first (%s); not reported", fd,
              strerror(errno));
    return;
  }
  if (!connect_args(args, sizeof args, "udp", &local, &remote, fd)) return;
  vpm_debug("udp fd %d to multiplexed port %u: reporting local port %u first", fd, remote.port,
            local.port);
  enum vpm_call_status st = vpm_ctl_call("connect", args, &reply, NULL, 1);
  if (st == VPM_CALL_UNREACHABLE) {
    /* The daemon never saw it: a later datagram tries again (at most once a
     * second while it stays unreachable: vpm_ctl_call's back-off). */
    vpm_debug("udp fd %d: not reported: %s", fd, reply.message);
    return;
  }
  /* Answered (or refused, or timed out after the daemon took the line): done
   * for this socket, so that a loop of sendto() does not ask again. */
  if (st != VPM_CALL_ANSWER)
    vpm_debug("udp fd %d: not confirmed: %s", fd, reply.message);
  else if (!reply.ok)
    vpm_debug("udp fd %d: the daemon refused the report: %s (%s)", fd, reply.message, reply.code);
  udp_set_record(fd, UDP_REPORTED | local.port);
}

/* Before a datagram to `dest` leaves fd: the fast path of every send. */
static inline void udp_before_send(int fd, const struct sockaddr *dest, socklen_t len) {
  if (!udp_ports || !udp_dest_multiplexed(dest, len) || udp_record(fd) != 0 || !active) return;
  int saved = errno;
  udp_report(fd, dest, len, 0);
  errno = saved;
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *dest,
                      socklen_t len) {
  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  udp_before_send(fd, dest, len);
  return vpm_real.sendto(fd, buf, n, flags, dest, len);
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  if (msg != NULL) udp_before_send(fd, (const struct sockaddr *)msg->msg_name, msg->msg_namelen);
  return vpm_real.sendmsg(fd, msg, flags);
}

EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags) {
  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  if (vec != NULL && udp_ports)
    for (unsigned i = 0; i < vlen; i++)
      udp_before_send(fd, (const struct sockaddr *)vec[i].msg_hdr.msg_name,
                      vec[i].msg_hdr.msg_namelen);
  return vpm_real.sendmmsg(fd, vec, vlen, flags);
}

/* A new descriptor: whatever record its number had belongs to a socket that
 * was closed without close() (close_range, a direct system call). */
EXPORT int socket(int domain, int type, int protocol) {
  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  int fd = vpm_real.socket(domain, type, protocol);
  if (fd >= 0) {
    uint32_t stale = udp_take_record(fd);
    if (stale != 0) {
      int e = errno;
      udp_forget(fd, stale, "the number is a new socket's (the old one closed behind our back)");
      errno = e;
    }
  }
  return fd;
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  int saved = errno, announced = 0;
  struct target remote;
  const char *proto = NULL;

  if (!ensure_init()) {
    errno = ENOSYS;
    return -1;
  }
  if (active && addr != NULL && len >= (socklen_t)sizeof(sa_family_t) &&
      addr->sa_family == AF_UNSPEC && udp_record(fd) != 0) {
    /* A UDP socket's disconnect: it may leave its port (an autobound one does). */
    int r = vpm_real.connect(fd, addr, len);
    int e = errno;
    uint32_t rec = udp_record(fd);
    if (rec != 0 && real_port(fd) != (rec & 0xffffu) && udp_take_record(fd) != 0)
      udp_forget(fd, rec, "disconnected from its port");
    errno = e;
    return r;
  }
  int ours = active && addr != NULL && len >= (socklen_t)sizeof(sa_family_t) &&
             read_addr(addr, len, &remote) && remote.port != 0 &&
             (proto = socket_proto(fd)) != NULL;
  if (ours && strcmp(proto, "udp") == 0) {
    /* connect() of a UDP socket sends nothing: report after it, with the
     * address it chose, before the program can send. */
    errno = saved;
    int r = vpm_real.connect(fd, addr, len);
    if (r == 0 && multiplexed("udp", remote.port)) {
      udp_report(fd, addr, len, 1);
      errno = saved;
    }
    return r;
  }
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
  /* A UDP client report ends before the descriptor does: its number can be a
   * new socket's (and that one's report) the moment the real close returns.
   * A socket bound through vpm ends both with its release, after the close. */
  uint32_t rec = udp_take_record(fd);
  if (rec != 0 && !(had && !gone.pending && !gone.inherited)) {
    int e = errno;
    udp_forget(fd, rec, "closed");
    errno = e;
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
