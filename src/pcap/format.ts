/**
 * The classic pcap file format (libpcap 2.4), shared by the reader and by the
 * writer behind `vpm dump`. Reference: draft-ietf-opsawg-pcap ("PCAP Capture File
 * Format") and libpcap's sf-pcap.c.
 *
 * A file is one global header, then records. Every multi-byte field of both
 * headers is in the byte order of the machine that wrote the file; the magic
 * number tells which (read back swapped, the file is the other order) and whether
 * the fractional timestamp counts microseconds or nanoseconds. Packet data is
 * never swapped: it is the bytes on the wire, as the link type describes them.
 *
 * Global header (24 bytes):
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  0 |                          Magic Number                         |
 *  4 |         Major Version         |         Minor Version         |
 *  8 |                   Reserved1 (thiszone, 0)                     |
 * 12 |                   Reserved2 (sigfigs, 0)                      |
 * 16 |                            SnapLen                            |
 * 20 |              LinkType and additional information              |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * Record header (16 bytes), followed by CapLen bytes of packet data:
 *
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *  0 |                      Timestamp (Seconds)                      |
 *  4 |        Timestamp (Microseconds or nanoseconds, per magic)     |
 *  8 |              Captured Packet Length (CapLen)                  |
 * 12 |              Original Packet Length (OrigLen)                 |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 */

/** Magic number of a file with microsecond timestamps, as the writer's u32. */
export const PCAP_MAGIC_USEC = 0xa1b2c3d4;
/** Magic number of a file with nanosecond timestamps, as the writer's u32. */
export const PCAP_MAGIC_NSEC = 0xa1b23c4d;
/**
 * The first four bytes of a pcapng file (Section Header Block type), the same in
 * either byte order. Not read here; recognised only to say so clearly.
 */
export const PCAPNG_MAGIC = 0x0a0d0d0a;

export const PCAP_VERSION_MAJOR = 2;
export const PCAP_VERSION_MINOR = 4;

export const PCAP_OFF_MAGIC = 0;
export const PCAP_OFF_VERSION_MAJOR = 4;
export const PCAP_OFF_VERSION_MINOR = 6;
export const PCAP_OFF_THISZONE = 8;
export const PCAP_OFF_SIGFIGS = 12;
export const PCAP_OFF_SNAPLEN = 16;
export const PCAP_OFF_LINKTYPE = 20;
export const PCAP_GLOBAL_HEADER_LEN = PCAP_OFF_LINKTYPE + 4;

export const PCAP_REC_OFF_TS_SEC = 0;
export const PCAP_REC_OFF_TS_FRAC = 4;
export const PCAP_REC_OFF_CAPLEN = 8;
export const PCAP_REC_OFF_ORIGLEN = 12;
export const PCAP_RECORD_HEADER_LEN = PCAP_REC_OFF_ORIGLEN + 4;

/**
 * The link type proper within the LinkType field (libpcap's LT_LINKTYPE): the top
 * bits may say how long a frame check sequence is, which is not the link type.
 */
export const PCAP_LINKTYPE_MASK = 0x03ffffff;

/**
 * The largest snapshot length libpcap writes (MAXIMUM_SNAPLEN) and the largest
 * record it reads. A larger CapLen is corruption, not a big packet: refusing it
 * keeps a damaged length field from being taken as a huge record.
 */
export const PCAP_MAX_SNAPLEN = 262144;

/** Link types (tcpdump.org/linktypes.html). */
export const LINKTYPE_ETHERNET = 1;
/** BSD loopback: a 4-byte address family in host byte order. */
export const LINKTYPE_NULL = 0;
/** Raw IP: the packet begins with an IPv4 or IPv6 header (what a TUN device gives). */
export const LINKTYPE_RAW = 101;
/** 802.11 with a radiotap header (a wireless device in monitor mode). */
export const LINKTYPE_IEEE802_11_RADIOTAP = 127;
/** Linux "cooked" capture v1 (tcpdump -i any), a 16-byte pseudo-header. */
export const LINKTYPE_LINUX_SLL = 113;
/** Raw IPv4 only. */
export const LINKTYPE_IPV4 = 228;
/** Linux "cooked" capture v2 (tcpdump -i any -y LINUX_SLL2), a 20-byte pseudo-header. */
export const LINKTYPE_LINUX_SLL2 = 276;

/**
 * The snapshot length `vpm dump` captures and writes: a whole IPv4 packet (the
 * total length field is 16 bits), which is also what the capture binding asks of
 * libpcap.
 */
export const PCAP_SNAPLEN_IP = 65535;

/** Ethernet II: destination, source, EtherType. */
export const ETH_OFF_ETHERTYPE = 12;
export const ETH_HEADER_LEN = ETH_OFF_ETHERTYPE + 2;
/** An 802.1Q / 802.1ad tag: TCI, then the inner EtherType. */
export const VLAN_TAG_LEN = 4;

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_QINQ = 0x88a8;

/**
 * LINUX_SLL: packet type (2), ARPHRD type (2), link-layer address length (2),
 * link-layer address (8), protocol (2, an EtherType for IP).
 */
export const SLL_OFF_PROTOCOL = 14;
export const SLL_HEADER_LEN = SLL_OFF_PROTOCOL + 2;

/**
 * LINUX_SLL2: protocol (2, an EtherType for IP), reserved (2), interface index (4),
 * ARPHRD type (2), packet type (1), address length (1), address (8).
 */
export const SLL2_OFF_PROTOCOL = 0;
export const SLL2_HEADER_LEN = 20;
