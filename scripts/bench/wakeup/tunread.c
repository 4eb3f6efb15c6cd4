/*
 * The cost of a read() that finds a TUN's queue empty (EAGAIN): the read that
 * ends every burst of vpm's read loop. Opens a TUN (in the caller's network
 * namespace: run it inside one), non-blocking, with or without IFF_VNET_HDR,
 * calls read() N times on the empty queue and prints {"nsPerRead":...,"reads":N}.
 *
 *   tunread NAME VNET(0|1) N
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: tunread NAME VNET(0|1) N\n");
    return 2;
  }
  int vnet = atoi(argv[2]);
  long n = atol(argv[3]);
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    perror("open /dev/net/tun");
    return 1;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
  strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    perror("TUNSETIFF");
    return 1;
  }
  static char buf[65600];
  struct timespec a, b;
  long eagain = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) {
    /* The raw system call, as vpm makes it (native/src/tun_dev.c). */
    if (syscall(SYS_read, fd, buf, sizeof buf) < 0 && errno == EAGAIN) eagain++;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
  printf("{\"nsPerRead\":%.1f,\"reads\":%ld,\"eagain\":%ld}\n", ns / (double)n, n, eagain);
  return eagain == n ? 0 : 1;
}
