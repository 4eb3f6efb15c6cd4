/*
 * What an fd received from another process is attached to (see tun_inspect.h):
 * TUNGETIFF, the device's rtnetlink attributes, TUNGETDEVNETNS, and the
 * virtio-net header ioctls. Plain C, no N-API; tun_napi.c's tunAdopt calls it.
 */
#define _GNU_SOURCE
#include "tun_inspect.h"

#include <errno.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <unistd.h>

#include "tun_dev.h"

#ifndef TUNGETDEVNETNS
#define TUNGETDEVNETNS _IO('T', 227)
#endif
#ifndef TUNGETVNETLE
#define TUNGETVNETLE _IOR('T', 221, int)
#endif
#ifndef IFF_NOFILTER
#define IFF_NOFILTER 0x1000
#endif

/* Append one part to the sentence in `why` ("; " between parts). */
static void add(char *why, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add(char *why, size_t len, const char *fmt, ...) {
  size_t used = strlen(why);
  if (used + 3 >= len) return;
  if (used) {
    memcpy(why + used, "; ", 3);
    used += 2;
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why + used, len - used, fmt, ap);
  va_end(ap);
}

/* What kind of file `fd` is, for a message about an fd that is no TUN. */
static const char *fd_kind(int fd, char *buf, size_t len) {
  struct stat st;
  if (fstat(fd, &st) < 0) return "of unknown kind";
  switch (st.st_mode & S_IFMT) {
    case S_IFIFO:
      return "a pipe or FIFO";
    case S_IFSOCK:
      return "a socket";
    case S_IFREG:
      return "a regular file";
    case S_IFDIR:
      return "a directory";
    case S_IFCHR:
      snprintf(buf, len, "character device %u:%u", major(st.st_rdev), minor(st.st_rdev));
      return buf;
    case S_IFBLK:
      snprintf(buf, len, "block device %u:%u", major(st.st_rdev), minor(st.st_rdev));
      return buf;
    default:
      return "of an unknown kind";
  }
}

/* 1: this process's network namespace, 0: another one, -1: cannot tell (old kernel, no /proc). */
static int same_netns(int fd) {
  int ns = ioctl(fd, TUNGETDEVNETNS);
  if (ns < 0) return -1;
  struct stat a, b;
  int same = -1;
  if (fstat(ns, &a) == 0 && stat("/proc/self/ns/net", &b) == 0)
    same = a.st_dev == b.st_dev && a.st_ino == b.st_ino;
  close(ns);
  return same;
}

enum { PI_OFF = 0, PI_ON = 1, PI_NOT_TUN = 2 };

/* IFLA_TUN_PI of the link `name` in the rtnetlink reply `buf`. */
static int parse_pi(const uint8_t *buf, int n) {
  for (const struct nlmsghdr *nh = (const void *)buf; NLMSG_OK(nh, n); nh = NLMSG_NEXT(nh, n)) {
    if (nh->nlmsg_type == NLMSG_ERROR) {
      const struct nlmsgerr *e = NLMSG_DATA(nh);
      return e->error < 0 ? e->error : -EPROTO;
    }
    if (nh->nlmsg_type != RTM_NEWLINK) continue;
    const struct ifinfomsg *ifi = NLMSG_DATA(nh);
    int alen = (int)nh->nlmsg_len - (int)NLMSG_LENGTH(sizeof *ifi);
    for (const struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
      if ((a->rta_type & NLA_TYPE_MASK) != IFLA_LINKINFO) continue;
      bool tun = false;
      const struct rtattr *data = NULL;
      int ilen = (int)RTA_PAYLOAD(a);
      for (const struct rtattr *b = RTA_DATA(a); RTA_OK(b, ilen); b = RTA_NEXT(b, ilen)) {
        unsigned t = b->rta_type & NLA_TYPE_MASK;
        if (t == IFLA_INFO_KIND) tun = RTA_PAYLOAD(b) >= 4 && !memcmp(RTA_DATA(b), "tun", 4);
        if (t == IFLA_INFO_DATA) data = b;
      }
      if (!tun || !data) return PI_NOT_TUN;
      int dlen = (int)RTA_PAYLOAD(data);
      for (const struct rtattr *c = RTA_DATA(data); RTA_OK(c, dlen); c = RTA_NEXT(c, dlen)) {
        if ((c->rta_type & NLA_TYPE_MASK) == IFLA_TUN_PI && RTA_PAYLOAD(c) >= 1)
          return *(const uint8_t *)RTA_DATA(c) ? PI_ON : PI_OFF;
      }
      return PI_NOT_TUN;
    }
    return PI_NOT_TUN;
  }
  return -EPROTO;
}

/*
 * Ask rtnetlink (RTM_GETLINK by name, this process's namespace) whether `name`
 * is a TUN with packet information. PI_ON, PI_OFF, PI_NOT_TUN, or -errno
 * (-ENODEV: no link of that name) with `*syscall` set.
 */
static int link_tun_pi(const char *name, const char **syscall) {
  struct {
    struct nlmsghdr nh;
    struct ifinfomsg ifi;
    char attrs[RTA_SPACE(IFNAMSIZ)];
  } req;
  memset(&req, 0, sizeof req);
  size_t nlen = strnlen(name, IFNAMSIZ - 1);
  struct rtattr *rta = (struct rtattr *)req.attrs;
  rta->rta_type = IFLA_IFNAME;
  rta->rta_len = RTA_LENGTH(nlen + 1);
  memcpy(RTA_DATA(rta), name, nlen);
  req.nh.nlmsg_len = NLMSG_LENGTH(sizeof req.ifi) + RTA_ALIGN(rta->rta_len);
  req.nh.nlmsg_type = RTM_GETLINK;
  req.nh.nlmsg_flags = NLM_F_REQUEST;
  req.nh.nlmsg_seq = 1;
  req.ifi.ifi_family = AF_UNSPEC;

  int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (s < 0) {
    *syscall = "socket(AF_NETLINK)";
    return -errno;
  }
  /* The kernel answers at once; the bound is only against the unexpected. */
  struct timeval tv = {2, 0};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  int rc;
  if (sendto(s, &req, req.nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
    rc = -errno;
    *syscall = "sendto(RTM_GETLINK)";
    close(s);
    return rc;
  }
  ssize_t n;
  do n = recv(s, NULL, 0, MSG_PEEK | MSG_TRUNC); /* the reply's size */
  while (n < 0 && errno == EINTR);
  uint8_t *buf = n > 0 ? malloc((size_t)n) : NULL;
  if (n > 0 && !buf) {
    close(s);
    *syscall = "malloc";
    return -ENOMEM;
  }
  if (n > 0) {
    do n = recv(s, buf, (size_t)n, 0);
    while (n < 0 && errno == EINTR);
  }
  if (n <= 0) {
    rc = n < 0 ? -errno : -EPROTO;
    *syscall = "recv(RTM_GETLINK)";
  } else {
    rc = parse_pi(buf, (int)n);
    if (rc < 0) *syscall = "RTM_GETLINK";
  }
  free(buf);
  close(s);
  return rc;
}

static const char *flag_names(unsigned f, char *buf, size_t len) {
  static const struct {
    unsigned bit;
    const char *name;
  } known[] = {{IFF_NAPI, "IFF_NAPI"}, {IFF_NAPI_FRAGS, "IFF_NAPI_FRAGS"},
               {IFF_ONE_QUEUE, "IFF_ONE_QUEUE"}};
  buf[0] = '\0';
  size_t used = 0;
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    if (!(f & known[i].bit)) continue;
    f &= ~known[i].bit;
    used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? " " : "", known[i].name);
    if (used >= len) return buf;
  }
  if (f) snprintf(buf + used, len - used, "%sunknown 0x%04x", used ? " " : "", f);
  return buf;
}

int vpm_tun_check_adopt(int fd, bool vnet_hdr, bool multi_queue, char name_out[IFNAMSIZ],
                        char *why, size_t why_len, int *err, const char **syscall) {
  why[0] = '\0';
  *err = 0;
  *syscall = "";
  name_out[0] = '\0';

  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) {
    int e = errno;
    char kind[48];
    if (e == EBADFD)
      add(why, why_len,
          "fd %d is /dev/net/tun but attached to no device (never attached, or its device was "
          "deleted)",
          fd);
    else if (e == EBADF)
      add(why, why_len, "fd %d is not open", fd);
    else
      add(why, why_len, "fd %d is %s, not a TUN device", fd, fd_kind(fd, kind, sizeof kind));
    *err = e;
    *syscall = "ioctl(TUNGETIFF)";
    return -1;
  }
  memcpy(name_out, ifr.ifr_name, IFNAMSIZ);
  name_out[IFNAMSIZ - 1] = '\0';
  const char *name = name_out;

  /* IFF_NOFILTER is IFF_NO_PI's bit and always set on a TUN: the PI answer comes from rtnetlink. */
  unsigned f = (unsigned short)ifr.ifr_flags & ~(unsigned)IFF_NOFILTER;
  unsigned type = f & (IFF_TUN | IFF_TAP);
  if (type == IFF_TAP)
    add(why, why_len, "%s is a TAP device (IFF_TAP), not a TUN", name);
  else if (type != IFF_TUN)
    add(why, why_len, "%s is of device type 0x%x, not a TUN", name, type);
  if (f & IFF_DETACH_QUEUE)
    add(why, why_len, "fd %d is a detached queue of %s (TUNSETQUEUE IFF_DETACH_QUEUE)", fd, name);
  bool has_vnet = (f & IFF_VNET_HDR) != 0, has_mq = (f & IFF_MULTI_QUEUE) != 0;
  if (has_vnet != vnet_hdr)
    add(why, why_len, "%s %s virtio-net headers (IFF_VNET_HDR) but vnetHdr is %s", name,
        has_vnet ? "has" : "has no", vnet_hdr ? "true" : "false");
  if (has_mq != multi_queue)
    add(why, why_len, "%s is %s (IFF_MULTI_QUEUE) but multiQueue is %s", name,
        has_mq ? "multi-queue" : "single-queue", multi_queue ? "true" : "false");
  unsigned other =
      f & ~(unsigned)(IFF_TUN | IFF_TAP | IFF_VNET_HDR | IFF_MULTI_QUEUE | IFF_PERSIST |
                      IFF_DETACH_QUEUE);
  if (other) {
    char names[96];
    add(why, why_len, "%s has flags vpm never sets: %s", name,
        flag_names(other, names, sizeof names));
  }

  int same = same_netns(fd);
  if (same == 0) {
    add(why, why_len, "%s is in another network namespace than this process", name);
  } else {
    const char *sc = "";
    int pi = link_tun_pi(name, &sc);
    if (pi == PI_ON)
      add(why, why_len, "%s prepends packet information (opened without IFF_NO_PI)", name);
    else if (pi == PI_NOT_TUN)
      add(why, why_len, "the link %s of this network namespace is not a TUN (rtnetlink kind)",
          name);
    else if (pi == -ENODEV)
      add(why, why_len, "there is no link %s in this network namespace", name);
    else if (pi < 0) {
      add(why, why_len, "cannot read the link attributes of %s: %s failed: %s", name, sc,
          strerror(-pi));
      *err = -pi;
      *syscall = sc;
    }
  }

  if (has_vnet && vnet_hdr) {
    int sz = 0, le = 0;
    if (ioctl(fd, TUNGETVNETHDRSZ, &sz) < 0) {
      *err = errno;
      *syscall = "ioctl(TUNGETVNETHDRSZ)";
      add(why, why_len, "cannot read the virtio-net header size of %s: %s", name, strerror(*err));
    } else if (sz != VPM_VNET_HDR_LEN) {
      add(why, why_len, "%s has %d-byte virtio-net headers (TUNSETVNETHDRSZ), vpm uses %d", name,
          sz, VPM_VNET_HDR_LEN);
    }
    if (ioctl(fd, TUNGETVNETLE, &le) < 0) {
      *err = errno;
      *syscall = "ioctl(TUNGETVNETLE)";
      add(why, why_len, "cannot read the virtio-net header byte order of %s: %s", name,
          strerror(*err));
    } else if (!le) {
      add(why, why_len,
          "%s has virtio-net headers that are not little-endian (TUNSETVNETLE 0), vpm uses "
          "little-endian",
          name);
    }
  }
  return why[0] ? -1 : 0;
}
