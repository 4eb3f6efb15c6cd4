/*
 * Just enough JSON for the control protocol, without allocation.
 *
 * Out: the only strings we put into a request are the AID and the address
 * text; vpm_json_escape makes any byte string safe inside "..." (quote,
 * backslash and control characters escaped; bytes >= 0x80 pass as they are).
 *
 * In: a response line comes from a root-owned daemon, but it is still input:
 * a bug, a different daemon version or a stray process on the socket must give
 * a clean "malformed answer", never a read past the line. So the whole line is
 * first validated with vpm_json_skip (RFC 8259 grammar, depth-limited), and
 * only then are the few fields we need (id, ok, result.port, error.code,
 * error.message) looked up in it.
 */
#include <string.h>

#include "preload.h"

#define MAX_DEPTH 32

int vpm_json_escape(char *out, size_t cap, const char *s) {
  static const char hex[] = "0123456789abcdef";
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char tmp[6];
    size_t k = 0;
    switch (*p) {
    case '"': tmp[k++] = '\\'; tmp[k++] = '"'; break;
    case '\\': tmp[k++] = '\\'; tmp[k++] = '\\'; break;
    case '\n': tmp[k++] = '\\'; tmp[k++] = 'n'; break;
    case '\r': tmp[k++] = '\\'; tmp[k++] = 'r'; break;
    case '\t': tmp[k++] = '\\'; tmp[k++] = 't'; break;
    default:
      if (*p < 0x20 || *p == 0x7f) {
        tmp[k++] = '\\'; tmp[k++] = 'u'; tmp[k++] = '0'; tmp[k++] = '0';
        tmp[k++] = hex[*p >> 4]; tmp[k++] = hex[*p & 15];
      } else {
        tmp[k++] = (char)*p;
      }
    }
    if (n + k + 1 > cap) return -1;
    memcpy(out + n, tmp, k);
    n += k;
  }
  if (n + 1 > cap) return -1;
  out[n] = '\0';
  return (int)n;
}

static const char *ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

static int is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return c - 'A' + 10;
}

/* p at the opening quote; returns after the closing quote. */
static const char *skip_string(const char *p, const char *end) {
  p++;
  while (p < end) {
    unsigned char c = (unsigned char)*p;
    if (c == '"') return p + 1;
    if (c < 0x20) return NULL;
    if (c == '\\') {
      if (++p >= end) return NULL;
      if (*p == 'u') {
        if (end - p < 5) return NULL;
        for (int i = 1; i <= 4; i++)
          if (!is_hex(p[i])) return NULL;
        p += 5;
        continue;
      }
      if (!strchr("\"\\/bfnrt", *p) || *p == '\0') return NULL;
    }
    p++;
  }
  return NULL;
}

static const char *skip_number(const char *p, const char *end) {
  if (p < end && *p == '-') p++;
  if (p >= end) return NULL;
  if (*p == '0') {
    p++;
  } else if (*p >= '1' && *p <= '9') {
    while (p < end && *p >= '0' && *p <= '9') p++;
  } else {
    return NULL;
  }
  if (p < end && *p == '.') {
    p++;
    if (p >= end || *p < '0' || *p > '9') return NULL;
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p >= end || *p < '0' || *p > '9') return NULL;
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  return p;
}

const char *vpm_json_skip(const char *p, const char *end, int depth) {
  p = ws(p, end);
  if (p >= end || depth > MAX_DEPTH) return NULL;
  switch (*p) {
  case '"':
    return skip_string(p, end);
  case '{':
  case '[': {
    char close = *p == '{' ? '}' : ']';
    int object = *p == '{';
    p = ws(p + 1, end);
    if (p < end && *p == close) return p + 1;
    for (;;) {
      if (object) {
        p = ws(p, end);
        if (p >= end || *p != '"') return NULL;
        p = skip_string(p, end);
        if (!p) return NULL;
        p = ws(p, end);
        if (p >= end || *p != ':') return NULL;
        p++;
      }
      p = vpm_json_skip(p, end, depth + 1);
      if (!p) return NULL;
      p = ws(p, end);
      if (p >= end) return NULL;
      if (*p == close) return p + 1;
      if (*p != ',') return NULL;
      p++;
    }
  }
  case 't':
    return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
  case 'f':
    return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
  case 'n':
    return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
  default:
    return skip_number(p, end);
  }
}

/* Append code point cp as UTF-8 if it fits in out[0..cap-1). */
static size_t put_utf8(char *out, size_t n, size_t cap, unsigned cp) {
  unsigned char b[4];
  size_t k;
  if (cp < 0x80) {
    b[0] = (unsigned char)cp;
    k = 1;
  } else if (cp < 0x800) {
    b[0] = (unsigned char)(0xc0 | (cp >> 6));
    b[1] = (unsigned char)(0x80 | (cp & 0x3f));
    k = 2;
  } else if (cp < 0x10000) {
    b[0] = (unsigned char)(0xe0 | (cp >> 12));
    b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    b[2] = (unsigned char)(0x80 | (cp & 0x3f));
    k = 3;
  } else {
    b[0] = (unsigned char)(0xf0 | (cp >> 18));
    b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    b[3] = (unsigned char)(0x80 | (cp & 0x3f));
    k = 4;
  }
  if (n + k >= cap) return n; /* truncated: never a partial sequence */
  memcpy(out + n, b, k);
  return n + k;
}

static unsigned hex4(const char *p) {
  return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 | hexval(p[3]));
}

int vpm_json_string(const char *val, const char *end, char *out, size_t cap) {
  const char *stop;
  size_t n = 0;
  if (cap == 0) return 0;
  out[0] = '\0';
  val = ws(val, end);
  if (val >= end || *val != '"') return 0;
  stop = skip_string(val, end);
  if (!stop) return 0;
  stop--; /* the closing quote */
  for (const char *p = val + 1; p < stop;) {
    if (*p != '\\') {
      if (n + 1 < cap) out[n++] = *p;
      p++;
      continue;
    }
    p++;
    char e = *p++;
    unsigned cp;
    switch (e) {
    case 'b': cp = '\b'; break;
    case 'f': cp = '\f'; break;
    case 'n': cp = '\n'; break;
    case 'r': cp = '\r'; break;
    case 't': cp = '\t'; break;
    case 'u':
      cp = hex4(p);
      p += 4;
      if (cp >= 0xd800 && cp < 0xdc00 && stop - p >= 6 && p[0] == '\\' && p[1] == 'u') {
        unsigned lo = hex4(p + 2);
        if (lo >= 0xdc00 && lo < 0xe000) {
          cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          p += 6;
        }
      }
      if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd; /* a lone surrogate */
      break;
    default: cp = (unsigned char)e; /* " \ / */
    }
    n = put_utf8(out, n, cap, cp);
  }
  out[n] = '\0';
  return 1;
}

int vpm_json_member(const char *obj, const char *end, const char *key, const char **val) {
  int found = 0;
  const char *p = ws(obj, end);
  if (p >= end || *p != '{') return 0;
  p = ws(p + 1, end);
  if (p < end && *p == '}') return 0;
  while (p < end) {
    char name[64];
    const char *after = skip_string(p, end);
    if (!after) return 0;
    vpm_json_string(p, end, name, sizeof name);
    p = ws(after, end);
    if (p >= end || *p != ':') return 0;
    p = ws(p + 1, end);
    if (strcmp(name, key) == 0) {
      *val = p;
      found = 1;
    }
    p = vpm_json_skip(p, end, 1);
    if (!p) return 0;
    p = ws(p, end);
    if (p >= end || *p != ',') break;
    p = ws(p + 1, end);
  }
  return found;
}

int vpm_json_uint(const char *val, const char *end, uint64_t *out) {
  uint64_t v = 0;
  const char *p = ws(val, end);
  const char *stop = skip_number(p, end);
  if (!stop || *p == '-') return 0;
  for (; p < stop; p++) {
    if (*p < '0' || *p > '9') return 0; /* a fraction or an exponent */
    v = v * 10 + (uint64_t)(*p - '0');
    if (v > (1ull << 53)) return 0;
  }
  *out = v;
  return 1;
}

int vpm_json_literal(const char *val, const char *end, const char *lit) {
  size_t n = strlen(lit);
  const char *p = ws(val, end);
  return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0;
}
