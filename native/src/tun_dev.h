/*
 * The TUN device in plain C: open and attach, the offload ioctls, link settings,
 * and the batched non-blocking read and write loops. No N-API here: tun_napi.c
 * marshals JS arguments, owns the object lifetime and the poll handle, and calls
 * these (as wireguard-go keeps tun_linux.go apart from offload_linux.go).
 *
 * Every function returns 0 (or a count) on success and a negative errno on
 * failure; none prints, allocates after open, or blocks (the fd is O_NONBLOCK).
 *
 * Virtio-net header. With VPM_TUN_VNET_HDR every packet read or written is
 * preceded by a struct virtio_net_hdr (10 bytes, VPM_VNET_HDR_LEN; set with
 * TUNSETVNETHDRSZ and made little-endian with TUNSETVNETLE on any host). The
 * read and write loops below take and give offsets of the IP packets; the
 * header sits in the `headroom` bytes right before each one.
 */
#ifndef VPM_TUN_DEV_H
#define VPM_TUN_DEV_H

#include <net/if.h>
#include <stdbool.h>
#include <stdint.h>

/* Offload bits of TUNSETOFFLOAD (include/uapi/linux/if_tun.h); USO since Linux 6.2. */
#define VPM_TUN_F_CSUM 0x01
#define VPM_TUN_F_TSO4 0x02
#define VPM_TUN_F_TSO6 0x04
#define VPM_TUN_F_TSO_ECN 0x08
#define VPM_TUN_F_USO4 0x20
#define VPM_TUN_F_USO6 0x40

#define VPM_VNET_HDR_LEN 10

/*
 * VPM_TUN_PERSIST: TUNSETPERSIST(1) once attached, so that the device, its
 * addresses and routes outlive this fd (a crash, kill -9, a restart): the next
 * open of the same name with the same flags attaches to it again (crash
 * survival, docs/deployment.md). vpm_tun_set_persist(fd, 0) before the last
 * close deletes it with that close.
 */
enum { VPM_TUN_MULTI_QUEUE = 1, VPM_TUN_VNET_HDR = 2, VPM_TUN_PERSIST = 4 };

typedef struct {
  uint64_t polls;             /* poll callbacks (counted by the glue) */
  uint64_t read_packets;      /* packets read */
  uint64_t read_batches;      /* bursts with >= 1 packet */
  uint64_t read_full_batches; /* bursts that filled the batch */
  uint64_t read_eagain;       /* reads that ended a burst with EAGAIN */
  uint64_t read_errors;       /* other read errors (packet dropped, or fatal) */
  uint64_t read_truncated;    /* packets that filled a whole slot: possibly cut, dropped */
  uint64_t read_short;        /* reads shorter than the virtio-net header: dropped */
  uint64_t write_calls;       /* write-batch calls */
  uint64_t write_packets;     /* packets written */
  uint64_t write_queue_full;  /* writes refused with EAGAIN/ENOBUFS (batch stopped there) */
  uint64_t write_errors;      /* writes refused with another errno (that packet not sent) */
  int last_read_errno;
  int last_write_errno;
} vpm_tun_stats;

/*
 * Open /dev/net/tun (O_RDWR | O_NONBLOCK | O_CLOEXEC) and attach it to `name`
 * (a name or a pattern with one %d; "" lets the kernel choose) with IFF_TUN |
 * IFF_NO_PI and the VPM_TUN_* `flags`. With VPM_TUN_VNET_HDR the header size is
 * set explicitly and the header made little-endian. Returns the fd, the kernel's
 * name in `name_out`; or -errno with `*syscall` naming the failed call.
 */
int vpm_tun_open(const char *name, unsigned flags, char name_out[IFNAMSIZ], const char **syscall);

/* TUNSETPERSIST: 1 keeps the device after its last fd closes, 0 lets that close delete it. */
int vpm_tun_set_persist(int fd, bool on);

/* TUNSETOFFLOAD with exactly `mask` (also 0): the mask is device-wide and survives detaches. */
int vpm_tun_set_offload(int fd, unsigned mask);

/*
 * Ask for `want`, settle for what the kernel accepts: the whole mask first,
 * then without USO4|USO6 (which the kernel takes only together, and older
 * kernels refuse with EINVAL), then without TSO_ECN, then without TSO. Stores
 * the mask in effect in `*accepted`; returns 0, or -errno when not even
 * TUN_F_CSUM (or 0) was accepted.
 */
int vpm_tun_negotiate_offload(int fd, unsigned want, unsigned *accepted);

/* Link settings by name, through an AF_INET socket of the caller's network namespace. */
int vpm_link_set_mtu(const char *name, unsigned mtu);
int vpm_link_set_txqueuelen(const char *name, unsigned len);
int vpm_link_set_up(const char *name, bool up);

/*
 * One bounded burst: read() into consecutive `slot`-byte slots of `buf` until
 * EAGAIN or `batch` packets. Packet n is buf[offsets[n] .. +lengths[n]); with a
 * `headroom` (the virtio-net header length, or 0) its header is the `headroom`
 * bytes before offsets[n]. A read that fills a whole slot may have been cut by
 * the kernel and is dropped (read_truncated); a read shorter than the header is
 * dropped (read_short). Returns the number of packets; `*fatal` is set to the
 * errno after which the fd is of no further use (device deleted), else 0.
 */
uint32_t vpm_tun_read_burst(int fd, uint8_t *buf, uint32_t slot, uint32_t batch,
                            uint32_t headroom, uint32_t *offsets, uint32_t *lengths,
                            vpm_tun_stats *st, int *fatal);

/*
 * Write packets [0, count) one write() each: packet i is the `headroom` bytes
 * before buf[offsets[i]] (its header) and lengths[i] bytes from there. Returns n:
 * packets [0, n) were taken (written, or refused one by one by the kernel, with
 * errnos[i] set to the errno, 0 when written, if errnos is not NULL), and [n,
 * count) were not tried because the queue is full (EAGAIN/ENOBUFS). `*refused`
 * counts the refused ones. The caller has checked every range.
 */
uint32_t vpm_tun_write_batch(int fd, const uint8_t *buf, const uint32_t *offsets,
                             const uint32_t *lengths, uint32_t count, uint32_t headroom,
                             int32_t *errnos, uint32_t *refused, vpm_tun_stats *st);

#endif
