/*
 * libvpm_preload: the virtual layer of vpm, loaded into unmodified programs
 * with LD_PRELOAD by `vpm exec`. Shared declarations of its three parts:
 *
 *   hooks.c    bind / getsockname / connect / close, the environment, the
 *              table of sockets bound through vpm, fork handling; UDP:
 *              sendto / sendmsg / sendmmsg / socket and the per-descriptor
 *              record of UDP sockets reported as clients
 *   control.c  the one control connection per process to the daemon:
 *              requests with a deadline, one-way messages, output buffering
 *   json.c     escaping strings we send; a validating scanner for the few
 *              fields we read from a response
 *
 * Everything but the hooked functions has hidden visibility, so nothing here
 * can clash with a symbol of the program it is loaded into.
 */
#ifndef VPM_PRELOAD_H
#define VPM_PRELOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#pragma GCC visibility push(hidden)

struct mmsghdr; /* <sys/socket.h> declares it only with _GNU_SOURCE */

/* The real libc functions, resolved once with dlsym(RTLD_NEXT). The control
 * connection only ever uses these, never the hooks. */
struct vpm_real {
  int (*bind)(int, const struct sockaddr *, socklen_t);
  int (*connect)(int, const struct sockaddr *, socklen_t);
  int (*getsockname)(int, struct sockaddr *, socklen_t *);
  int (*close)(int);
  int (*socket)(int, int, int);
  ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
  ssize_t (*sendmsg)(int, const struct msghdr *, int);
  int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
};
extern struct vpm_real vpm_real;

/* Settings read from the environment once (hooks.c). */
extern int vpm_debug_on;
extern unsigned vpm_timeout_ms;
extern const char *vpm_socket_path;
extern char vpm_aid_json[]; /* the AID, already escaped for a JSON string */

void vpm_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void vpm_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- control.c ---------------------------------------------------------- */

/* How a request ended. VPM_CALL_ANSWER means the daemon answered (ok or not);
 * the others mean it did not, and `message` says why. */
enum vpm_call_status {
  VPM_CALL_ANSWER = 0,
  VPM_CALL_UNREACHABLE, /* no daemon at the socket, or it closed on us */
  VPM_CALL_TIMEOUT,     /* no answer before the deadline */
  VPM_CALL_MALFORMED,   /* the answer was not what the protocol says */
  VPM_CALL_BUSY,        /* our output buffer is full: the daemon reads nothing */
};

struct vpm_reply {
  int ok;
  unsigned port;     /* result.port, when ok (0: the result has none) */
  char code[64];     /* error.code, when !ok */
  char message[512]; /* error.message, or why the call failed */
};

/* What to release if the answer to an abandoned bind request (timed out,
 * buried under a malformed line) still arrives and grants a port. */
struct vpm_bind_intent {
  const char *proto;
  unsigned vport;
  int fd;
};

/* Send {"v":1,"id":N,"cmd":cmd,"args":args} and wait for the answer with id N,
 * at most vpm_timeout_ms. `args` is a JSON object text. `report` = 1 for a
 * report the program does not depend on (connect): it is not even tried for a
 * second after the daemon was unreachable or silent, so that a dead daemon
 * does not slow every connect() down. */
enum vpm_call_status vpm_ctl_call(const char *cmd, const char *args, struct vpm_reply *reply,
                                  const struct vpm_bind_intent *intent, int report);
/* Where a one-way message may go (vpm_ctl_oneway). */
enum vpm_oneway_mode {
  VPM_ONEWAY_OPEN = 1, /* a report: on the connection, opened if there is none */
  /* A release of something the daemon holds for this process (a bound port, a
   * UDP report). On the open connection; when there is none, or it broke (the
   * daemon restarted: the next one recovered our registrations from its state
   * and has no connection of ours), on a new one, if this process ever had
   * one (otherwise the daemon holds nothing of ours). A release that cannot
   * be delivered now (no daemon) waits, a few at most, and goes out first on
   * the next connection this process opens. */
  VPM_ONEWAY_HELD = 2,
};

/* Send {"v":1,"id":N,"cmd":cmd,"oneway":true,"args":args}; no answer comes.
 * Returns 0 if the message was sent or queued (for VPM_ONEWAY_HELD: also
 * kept for the next connection). */
int vpm_ctl_oneway(const char *cmd, const char *args, enum vpm_oneway_mode mode);
/* fd is a control connection (ours, or one inherited over fork) that the
 * program must not close under us. */
int vpm_ctl_is_protected(int fd);
/* fork(): the child forgets the connection (keeps the fd open). */
void vpm_ctl_atfork_child(void);

/* ---- json.c ------------------------------------------------------------- */

/* Escape s as the inside of a JSON string into out (cap bytes, NUL-terminated).
 * Returns the length, or -1 if it does not fit. */
int vpm_json_escape(char *out, size_t cap, const char *s);
/* Skip one JSON value starting at p (leading whitespace allowed); return the
 * position after it, or NULL if the text is not valid JSON. */
const char *vpm_json_skip(const char *p, const char *end, int depth);
/* In the (validated) object starting at `obj`, find member `key`; *val points
 * at its value. Returns 1 if found. The last of duplicate keys wins. */
int vpm_json_member(const char *obj, const char *end, const char *key, const char **val);
/* A non-negative integer value (no fraction, no exponent) up to 2^53. */
int vpm_json_uint(const char *val, const char *end, uint64_t *out);
/* A string value, unescaped to UTF-8, truncated to cap-1 bytes. */
int vpm_json_string(const char *val, const char *end, char *out, size_t cap);
/* Is the value the literal true / false / null? */
int vpm_json_literal(const char *val, const char *end, const char *lit);

#pragma GCC visibility pop

#endif
