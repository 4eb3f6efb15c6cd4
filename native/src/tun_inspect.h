/*
 * What a file descriptor received from another process is attached to, before
 * tunAdopt (tun_napi.c) wraps it as a device. Plain C, no N-API.
 *
 * The kernel's answers this relies on (drivers/net/tun.c, __tun_chr_ioctl):
 *
 *  - TUNGETIFF on an fd of /dev/net/tun that is attached gives the device's name
 *    and tun_flags(): IFF_TUN or IFF_TAP, the TUN_FEATURES it was attached with
 *    (IFF_NO_PI, IFF_ONE_QUEUE, IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_NAPI,
 *    IFF_NAPI_FRAGS) and IFF_PERSIST; plus IFF_DETACH_QUEUE for a queue detached
 *    with TUNSETQUEUE, and IFF_NOFILTER when no socket filter is attached. On an
 *    fd of /dev/net/tun that is not attached (never TUNSETIFF'd, or its device was
 *    deleted) it fails with EBADFD; on anything else (a pipe, a socket, a file,
 *    /dev/null) with ENOTTY.
 *  - IFF_NOFILTER is 0x1000, the same bit as IFF_NO_PI, and a TUN (not a TAP)
 *    never has a filter: TUNGETIFF always shows the bit, so it cannot tell
 *    whether the device prepends the 4-byte packet information. The device's own
 *    rtnetlink attributes can (IFLA_INFO_DATA of kind "tun": IFLA_TUN_PI is
 *    !(flags & IFF_NO_PI)), asked by name in this process's network namespace.
 *  - TUNGETDEVNETNS (Linux 5.2+) gives an fd of the device's network namespace:
 *    the name is only meaningful there, so a device in another namespace than
 *    this process's is refused (the daemon configures its TUN by name).
 *  - TUNGETVNETHDRSZ and TUNGETVNETLE: the header size and byte order, which are
 *    device-wide and survive detaches.
 */
#ifndef VPM_TUN_INSPECT_H
#define VPM_TUN_INSPECT_H

#include <net/if.h>
#include <stdbool.h>
#include <stddef.h>

/*
 * Check that `fd` is attached to a TUN device as vpm opens them: IFF_TUN, no
 * packet information, IFF_VNET_HDR exactly when `vnet_hdr` (then a 10-byte,
 * little-endian header), IFF_MULTI_QUEUE exactly when `multi_queue`, an attached
 * (not detached) queue, no flag vpm never sets (IFF_PERSIST is allowed), in this
 * process's network namespace.
 *
 * Returns 0 with the device's name in `name_out`. Otherwise returns -1 with a
 * sentence in `why` naming every difference found; when a system call failed
 * (rather than the device being different) `*err` is its errno and `*syscall`
 * its name, else both are 0/"". Changes nothing on the fd.
 */
int vpm_tun_check_adopt(int fd, bool vnet_hdr, bool multi_queue, char name_out[IFNAMSIZ],
                        char *why, size_t why_len, int *err, const char **syscall);

#endif
