/*
 * The TUN device in plain C (see tun_dev.h): no N-API, no allocation, no
 * blocking. tun_napi.c is the only caller.
 */
#define _GNU_SOURCE
#include "tun_dev.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * read(2) and write(2) without glibc's wrappers: those are cancellation points
 * and switch asynchronous cancellation on and off around every call (seen at
 * ~2% of the daemon's CPU in a 64-byte request/response profile). vpm never
 * cancels threads, so the raw system call does the same work for less.
 */
static inline ssize_t raw_read(int fd, void *buf, size_t len) {
  return (ssize_t)syscall(SYS_read, fd, buf, len);
}

static inline ssize_t raw_write(int fd, const void *buf, size_t len) {
  return (ssize_t)syscall(SYS_write, fd, buf, len);
}

#ifndef TUNSETVNETLE
#define TUNSETVNETLE _IOW('T', 220, int)
#endif

int vpm_tun_open(const char *name, unsigned flags, char name_out[IFNAMSIZ], const char **syscall) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *syscall = "open";
    return -errno;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  if (flags & VPM_TUN_MULTI_QUEUE) ifr.ifr_flags |= IFF_MULTI_QUEUE;
  if (flags & VPM_TUN_VNET_HDR) ifr.ifr_flags |= IFF_VNET_HDR;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    *syscall = "ioctl(TUNSETIFF)";
    return -err;
  }
  if ((flags & VPM_TUN_PERSIST) && ioctl(fd, TUNSETPERSIST, 1) < 0) {
    int err = errno;
    close(fd);
    *syscall = "ioctl(TUNSETPERSIST)";
    return -err;
  }
  if (flags & VPM_TUN_VNET_HDR) {
    /* Explicitly, not the kernel's default: a device reattached later may have kept another. */
    int sz = VPM_VNET_HDR_LEN, le = 1;
    if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) {
      int err = errno;
      close(fd);
      *syscall = "ioctl(TUNSETVNETHDRSZ)";
      return -err;
    }
    /* Little-endian whatever the host (virtio 1.0); the data plane reads it as such. */
    if (ioctl(fd, TUNSETVNETLE, &le) < 0) {
      int err = errno;
      close(fd);
      *syscall = "ioctl(TUNSETVNETLE)";
      return -err;
    }
  }
  memcpy(name_out, ifr.ifr_name, IFNAMSIZ);
  name_out[IFNAMSIZ - 1] = '\0';
  return fd;
}

int vpm_tun_set_persist(int fd, bool on) {
  return ioctl(fd, TUNSETPERSIST, on ? 1UL : 0UL) < 0 ? -errno : 0;
}

int vpm_tun_set_offload(int fd, unsigned mask) {
  return ioctl(fd, TUNSETOFFLOAD, (unsigned long)mask) < 0 ? -errno : 0;
}

int vpm_tun_negotiate_offload(int fd, unsigned want, unsigned *accepted) {
  const unsigned uso = VPM_TUN_F_USO4 | VPM_TUN_F_USO6;
  const unsigned tso = VPM_TUN_F_TSO4 | VPM_TUN_F_TSO6 | VPM_TUN_F_TSO_ECN;
  /* Each step drops what an older or a stricter kernel answers EINVAL for. */
  const unsigned tries[] = {want, want & ~uso, want & ~uso & ~VPM_TUN_F_TSO_ECN,
                            want & ~uso & ~tso};
  int err = -EINVAL;
  for (unsigned i = 0; i < sizeof tries / sizeof tries[0]; i++) {
    if (i > 0 && tries[i] == tries[i - 1]) continue;
    err = vpm_tun_set_offload(fd, tries[i]);
    if (err == 0) {
      *accepted = tries[i];
      return 0;
    }
    if (err != -EINVAL) return err;
  }
  return err;
}

static int link_ioctl(unsigned long req, struct ifreq *ifr) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -errno;
  int rc = ioctl(s, req, ifr);
  int err = errno;
  close(s);
  return rc == 0 ? 0 : -err;
}

static void ifr_for(struct ifreq *ifr, const char *name) {
  memset(ifr, 0, sizeof *ifr);
  strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
}

int vpm_link_set_mtu(const char *name, unsigned mtu) {
  struct ifreq ifr;
  ifr_for(&ifr, name);
  ifr.ifr_mtu = (int)mtu;
  return link_ioctl(SIOCSIFMTU, &ifr);
}

int vpm_link_set_txqueuelen(const char *name, unsigned len) {
  struct ifreq ifr;
  ifr_for(&ifr, name);
  ifr.ifr_qlen = (int)len;
  return link_ioctl(SIOCSIFTXQLEN, &ifr);
}

int vpm_link_set_up(const char *name, bool up) {
  struct ifreq ifr;
  ifr_for(&ifr, name);
  int rc = link_ioctl(SIOCGIFFLAGS, &ifr);
  if (rc < 0) return rc;
  if (up)
    ifr.ifr_flags |= IFF_UP;
  else
    ifr.ifr_flags &= ~IFF_UP;
  return link_ioctl(SIOCSIFFLAGS, &ifr);
}

/* Read errors after which the fd is of no further use: the device was deleted or detached. */
static bool fatal_read_errno(int err) {
  return err == EBADF || err == EBADFD || err == EIO || err == ENXIO || err == ENODEV ||
         err == EPIPE;
}

uint32_t vpm_tun_read_burst(int fd, uint8_t *buf, uint32_t slot, uint32_t batch,
                            uint32_t headroom, uint32_t *offsets, uint32_t *lengths,
                            vpm_tun_stats *st, int *fatal) {
  uint32_t n = 0;
  *fatal = 0;
  /* At most `batch` read() calls: packets, or per-packet errors (each consumes its packet). */
  for (uint32_t tries = 0; tries < batch && n < batch; tries++) {
    size_t at = (size_t)n * slot;
    ssize_t r = raw_read(fd, buf + at, slot);
    if (r >= 0 && (size_t)r >= slot) {
      /* The kernel cuts a packet to the read size without telling: a full slot may be a
         truncated packet, so slots are larger than any packet and a full one is dropped. */
      st->read_truncated++;
      continue;
    }
    if (r >= 0 && (size_t)r < headroom) {
      st->read_short++;
      continue;
    }
    if (r >= 0) {
      offsets[n] = (uint32_t)(at + headroom);
      lengths[n] = (uint32_t)((size_t)r - headroom);
      n++;
      continue;
    }
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      st->read_eagain++;
      break;
    }
    if (e == EINTR) continue;
    st->read_errors++;
    st->last_read_errno = e;
    if (fatal_read_errno(e)) {
      *fatal = e;
      break;
    }
  }
  st->read_packets += n;
  if (n > 0) st->read_batches++;
  if (n > 0 && n == batch) st->read_full_batches++;
  return n;
}

uint32_t vpm_tun_write_batch(int fd, const uint8_t *buf, const uint32_t *offsets,
                             const uint32_t *lengths, uint32_t count, uint32_t headroom,
                             int32_t *errnos, uint32_t *refused, vpm_tun_stats *st) {
  uint32_t i = 0;
  *refused = 0;
  st->write_calls++;
  while (i < count) {
    ssize_t r = raw_write(fd, buf + offsets[i] - headroom, (size_t)lengths[i] + headroom);
    if (r >= 0) {
      st->write_packets++;
      if (errnos) errnos[i] = 0;
      i++;
      continue;
    }
    int e = errno;
    if (e == EINTR) continue;
    st->last_write_errno = e;
    if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
      st->write_queue_full++;
      break; /* queue full: [i, count) not written; the caller counts them */
    }
    st->write_errors++; /* the kernel refused this packet (e.g. EINVAL): go on with the next */
    (*refused)++;
    if (errnos) errnos[i] = e;
    i++;
  }
  return i;
}
