/*
 * floor: the least any Pusher-protocol server must do, as a reference for the benchmark.
 *
 * One thread, one epoll loop, libc only. It speaks just enough of the Pusher Channels protocol
 * (https://pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol/) for
 * bench/ to measure it like kanal and soketi:
 *
 *   GET /app/{key}?...  RFC 6455 upgrade (Sec-WebSocket-Accept, section 4.2.2), then
 *                       pusher:connection_established; answers pusher:subscribe with
 *                       pusher_internal:subscription_succeeded (no channel auth checked),
 *                       pusher:ping with pusher:pong, Ping frames with Pong, Close with Close.
 *   POST /apps/{id}/events, /apps/{id}/batch_events
 *                       parse the head and the Content-Length body, take name, channel or
 *                       channels and data as raw JSON tokens, build each channel's event frame
 *                       ONCE and write it to every subscriber; answer 200 {} (keep-alive).
 *                       No signature, no limits, no validation: that is the point.
 *   GET /               200 (readiness).
 *
 * Output is written once per loop iteration: what one epoll_wait round produced for a
 * connection (several events when several publishers triggered at once) goes out in one
 * send(), as kanal coalesces its writes; with one event per round that is one send() per
 * subscriber per event. Unsent output is kept and sent on EPOLLOUT (over 64 MiB: closed).
 * Usage: floor PORT  (listens on 127.0.0.1:PORT; ends on SIGTERM).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_OUT (64u << 20)
#define MAX_HEAD 65536u
#define MAX_FRAME (1u << 20)

typedef struct { char *p; size_t len, cap; } buf_t;

typedef struct {
    int fd, ws, dead, close_after, want_out;
    buf_t in, out;
    int *chans, nchans, capchans; /* indices into channels[] */
} conn_t;

typedef struct { char *name; size_t len; int *fds, n, cap; } chan_t;

static chan_t *channels;
static int nchannels, capchannels;
static conn_t **conns; /* by fd */
static int capconns, ep;
static int *dead, ndead, capdead;
static int *dirty, ndirty, capdirty; /* connections with output queued in this iteration */
static unsigned long next_socket = 1;

static void *grow(void *p, int *cap, int need, size_t size) {
    if (need <= *cap) return p;
    int c = *cap ? *cap : 8;
    while (c < need) c *= 2;
    p = realloc(p, (size_t)c * size);
    if (!p) abort();
    *cap = c;
    return p;
}

static void buf_add(buf_t *b, const void *d, size_t n) {
    if (b->len + n > b->cap) {
        size_t c = b->cap ? b->cap : 512;
        while (c < b->len + n) c *= 2;
        b->p = realloc(b->p, c);
        if (!b->p) abort();
        b->cap = c;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void buf_drop(buf_t *b, size_t n) {
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

/* ---- SHA-1 (FIPS 180-4) and base64, for Sec-WebSocket-Accept only ---- */

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t *m = calloc(total, 1);
    if (!m) abort();
    memcpy(m, msg, len);
    m[len] = 0x80;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (uint8_t)(((uint64_t)len * 8) >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(m);
    for (int i = 0; i < 20; i++) out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = i + 1 < n ? abc[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- minimal JSON: values are kept as raw tokens (a string keeps its quotes and escapes) ---- */

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static const char *skip_string(const char *p, const char *e) {
    for (p++; p < e; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *e) {
    p = skip_ws(p, e);
    if (p >= e) return NULL;
    if (*p == '"') return skip_string(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; p < e; p++) {
            if (*p == '"') {
                if (!(p = skip_string(p, e))) return NULL;
                p--;
            } else if (*p == '{' || *p == '[') depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0) return p + 1;
        }
        return NULL;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ') p++;
    return p;
}

/* The raw value of member `key` of the object at p, in [*v, *ve). */
static int member(const char *p, const char *e, const char *key, const char **v, const char **ve) {
    size_t klen = strlen(key);
    p = skip_ws(p, e);
    if (p >= e || *p != '{') return 0;
    for (p++;;) {
        p = skip_ws(p, e);
        if (p >= e || *p != '"') return 0;
        const char *ks = p + 1, *ke = skip_string(p, e);
        if (!ke) return 0;
        p = skip_ws(ke, e);
        if (p >= e || *p != ':') return 0;
        p = skip_ws(p + 1, e);
        const char *end = skip_value(p, e);
        if (!end) return 0;
        if ((size_t)(ke - 1 - ks) == klen && memcmp(ks, key, klen) == 0) {
            *v = p, *ve = end;
            return 1;
        }
        p = skip_ws(end, e);
        if (p < e && *p == ',') p++;
    }
}

/* ---- connections ---- */

static void kill_conn(conn_t *c) {
    if (!c->dead) {
        c->dead = 1;
        dead = grow(dead, &capdead, ndead + 1, sizeof *dead);
        dead[ndead++] = c->fd;
    }
}

static void want_out(conn_t *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = c->fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

/* Queue output; it is sent when the loop iteration ends (flush_dirty) or on EPOLLOUT. */
static void conn_send(conn_t *c, const char *d, size_t n) {
    if (c->dead) return;
    if (c->out.len + n > MAX_OUT) return kill_conn(c);
    if (c->out.len == 0 && !c->want_out) {
        dirty = grow(dirty, &capdirty, ndirty + 1, sizeof *dirty);
        dirty[ndirty++] = c->fd;
    }
    buf_add(&c->out, d, n);
}

static void flush(conn_t *c) {
    while (c->out.len) {
        ssize_t w = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) kill_conn(c);
            else want_out(c, 1); /* the socket is full: the rest on EPOLLOUT */
            return;
        }
        buf_drop(&c->out, (size_t)w);
    }
    want_out(c, 0);
    if (c->close_after) kill_conn(c);
}

/* A server-to-client frame (RFC 6455 section 5.2: FIN, unmasked) of `n` bytes at `payload`. */
static void send_frame(conn_t *c, int opcode, const char *payload, size_t n, buf_t *scratch) {
    uint8_t head[10];
    size_t h = 2;
    head[0] = (uint8_t)(0x80 | opcode);
    if (n < 126) head[1] = (uint8_t)n;
    else if (n < 65536) head[1] = 126, head[2] = (uint8_t)(n >> 8), head[3] = (uint8_t)n, h = 4;
    else {
        head[1] = 127, h = 10;
        for (int i = 0; i < 8; i++) head[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    }
    scratch->len = 0;
    buf_add(scratch, head, h);
    buf_add(scratch, payload, n);
    if (c) conn_send(c, scratch->p, scratch->len);
}

static int find_channel(const char *name, size_t len, int create) {
    for (int i = 0; i < nchannels; i++)
        if (channels[i].len == len && memcmp(channels[i].name, name, len) == 0) return i;
    if (!create) return -1;
    channels = grow(channels, &capchannels, nchannels + 1, sizeof *channels);
    chan_t *ch = &channels[nchannels];
    memset(ch, 0, sizeof *ch);
    ch->name = malloc(len);
    if (!ch->name) abort();
    memcpy(ch->name, name, len);
    ch->len = len;
    return nchannels++;
}

static void subscribe(conn_t *c, const char *name, size_t len) {
    int i = find_channel(name, len, 1);
    for (int k = 0; k < c->nchans; k++)
        if (c->chans[k] == i) return;
    chan_t *ch = &channels[i];
    ch->fds = grow(ch->fds, &ch->cap, ch->n + 1, sizeof *ch->fds);
    ch->fds[ch->n++] = c->fd;
    c->chans = grow(c->chans, &c->capchans, c->nchans + 1, sizeof *c->chans);
    c->chans[c->nchans++] = i;
}

static void close_conn(int fd) {
    conn_t *c = conns[fd];
    for (int k = 0; k < c->nchans; k++) {
        chan_t *ch = &channels[c->chans[k]];
        for (int j = 0; j < ch->n; j++)
            if (ch->fds[j] == fd) {
                ch->fds[j] = ch->fds[--ch->n];
                break;
            }
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(c->in.p), free(c->out.p), free(c->chans), free(c);
    conns[fd] = NULL;
}

/* ---- publishing: one frame per channel, written to every subscriber ---- */

static buf_t json, frame;

static void publish(const char *name, const char *ne, const char *chan, size_t clen,
                    const char *data, const char *de) {
    int i = find_channel(chan, clen, 0);
    if (i < 0 || channels[i].n == 0) return;
    json.len = 0;
    buf_add(&json, "{\"event\":", 9);
    buf_add(&json, name, (size_t)(ne - name));
    buf_add(&json, ",\"channel\":\"", 12);
    buf_add(&json, chan, clen);
    buf_add(&json, "\",\"data\":", 9);
    buf_add(&json, data, (size_t)(de - data));
    buf_add(&json, "}", 1);
    send_frame(NULL, 1, json.p, json.len, &frame);
    chan_t *ch = &channels[i];
    for (int j = 0; j < ch->n; j++) conn_send(conns[ch->fds[j]], frame.p, frame.len);
}

/* One event object: {"name", "channel" | "channels": [...], "data"}. */
static int trigger(const char *p, const char *e) {
    const char *n, *ne, *d, *de, *c, *ce;
    if (!member(p, e, "name", &n, &ne) || !member(p, e, "data", &d, &de)) return 0;
    if (member(p, e, "channel", &c, &ce)) {
        if (*c != '"') return 0;
        publish(n, ne, c + 1, (size_t)(ce - c - 2), d, de);
        return 1;
    }
    if (!member(p, e, "channels", &c, &ce) || *c != '[') return 0;
    for (c = skip_ws(c + 1, ce); c < ce && *c == '"';) {
        const char *end = skip_string(c, ce);
        if (!end) return 0;
        publish(n, ne, c + 1, (size_t)(end - c - 2), d, de);
        c = skip_ws(end, ce);
        if (c < ce && *c == ',') c = skip_ws(c + 1, ce);
    }
    return 1;
}

static int batch(const char *p, const char *e) {
    const char *a, *ae;
    if (!member(p, e, "batch", &a, &ae) || *a != '[') return 0;
    for (a = skip_ws(a + 1, ae); a < ae && *a == '{';) {
        const char *end = skip_value(a, ae);
        if (!end || !trigger(a, end)) return 0;
        a = skip_ws(end, ae);
        if (a < ae && *a == ',') a = skip_ws(a + 1, ae);
    }
    return 1;
}

/* ---- WebSocket side ---- */

static void on_message(conn_t *c, const char *p, size_t n) {
    const char *e = p + n, *ev, *eve, *data, *datae, *ch, *che;
    char reply[512];
    if (!member(p, e, "event", &ev, &eve)) return;
    if (eve - ev == 18 && memcmp(ev, "\"pusher:subscribe\"", 18) == 0) {
        if (!member(p, e, "data", &data, &datae) || !member(data, datae, "channel", &ch, &che) ||
            *ch != '"' || che - ch > 300)
            return;
        subscribe(c, ch + 1, (size_t)(che - ch - 2));
        int len = snprintf(reply, sizeof reply,
                           "{\"event\":\"pusher_internal:subscription_succeeded\",\"channel\":%.*s,"
                           "\"data\":\"{}\"}",
                           (int)(che - ch), ch);
        send_frame(c, 1, reply, (size_t)len, &frame);
    } else if (eve - ev == 13 && memcmp(ev, "\"pusher:ping\"", 13) == 0) {
        static const char pong[] = "{\"event\":\"pusher:pong\",\"data\":\"{}\"}";
        send_frame(c, 1, pong, sizeof pong - 1, &frame);
    }
}

/* Client frames are masked (RFC 6455 section 5.3); fragmented messages are not expected. */
static int ws_feed(conn_t *c) {
    while (c->in.len >= 2 && !c->dead) {
        uint8_t *p = (uint8_t *)c->in.p;
        uint64_t n = p[1] & 0x7f;
        size_t h = 2;
        if (n == 126) {
            if (c->in.len < 4) return 0;
            n = (uint64_t)p[2] << 8 | p[3], h = 4;
        } else if (n == 127) {
            if (c->in.len < 10) return 0;
            n = 0, h = 10;
            for (int i = 0; i < 8; i++) n = n << 8 | p[2 + i];
        }
        if (n > MAX_FRAME) return -1;
        size_t mask = p[1] & 0x80 ? 4 : 0;
        if (c->in.len < h + mask + n) return 0;
        uint8_t *payload = p + h + mask;
        for (size_t i = 0; mask && i < n; i++) payload[i] ^= p[h + (i & 3)];
        int opcode = p[0] & 0x0f;
        if (opcode == 1) on_message(c, (char *)payload, (size_t)n);
        else if (opcode == 9) send_frame(c, 10, (char *)payload, (size_t)n, &frame);
        else if (opcode == 8) {
            send_frame(c, 8, (char *)payload, n >= 2 ? 2 : 0, &frame);
            c->close_after = 1; /* closed once the Close is sent (flush) */
            return 0;
        }
        buf_drop(&c->in, h + mask + (size_t)n);
    }
    return 0;
}

/* ---- HTTP side ---- */

/* The value of header `name` in the head [p, e), trimmed; NULL when absent. */
static const char *header(const char *p, const char *e, const char *name, size_t *len) {
    size_t nlen = strlen(name);
    for (p = memmem(p, (size_t)(e - p), "\r\n", 2); p && p + 2 < e;
         p = memmem(p + 2, (size_t)(e - p - 2), "\r\n", 2)) {
        const char *line = p + 2, *eol = memmem(line, (size_t)(e - line), "\r\n", 2);
        if (!eol) eol = e;
        if ((size_t)(eol - line) > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            while (v < eol && *v == ' ') v++;
            *len = (size_t)(eol - v);
            return v;
        }
    }
    return NULL;
}

static void respond(conn_t *c, const char *status, const char *body) {
    char out[256];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                     status, strlen(body), c->close_after ? "Connection: close\r\n" : "", body);
    conn_send(c, out, (size_t)n); /* with close_after, closed once it is sent (flush) */
}

static void upgrade(conn_t *c, const char *key, size_t klen) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"; /* RFC 6455 section 1.3 */
    uint8_t digest[20];
    char accept[32], out[512], est[256];
    buf_t k = {0};
    buf_add(&k, key, klen);
    buf_add(&k, guid, sizeof guid - 1);
    sha1((uint8_t *)k.p, k.len, digest);
    free(k.p);
    base64(digest, 20, accept);
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    conn_send(c, out, (size_t)n);
    int m = snprintf(est, sizeof est,
                     "{\"event\":\"pusher:connection_established\",\"data\":\"{\\\"socket_id\\\":"
                     "\\\"%lu.%d\\\",\\\"activity_timeout\\\":120}\"}",
                     next_socket++, c->fd);
    send_frame(c, 1, est, (size_t)m, &frame);
    c->ws = 1;
}

static int ends_with(const char *p, size_t n, const char *suffix) {
    size_t s = strlen(suffix);
    return n >= s && memcmp(p + n - s, suffix, s) == 0;
}

static void request(conn_t *c, const char *head, const char *he, const char *body, size_t blen) {
    const char *sp = memchr(head, ' ', (size_t)(he - head));
    const char *target = sp + 1, *te = memchr(target, ' ', (size_t)(he - target));
    const char *q = memchr(target, '?', (size_t)(te - target));
    size_t plen = (size_t)((q ? q : te) - target), vlen;
    const char *v = header(head, he, "connection", &vlen);
    if (v && vlen == 5 && strncasecmp(v, "close", 5) == 0) c->close_after = 1;
    if (sp - head == 3 && memcmp(head, "GET", 3) == 0) {
        const char *key = header(head, he, "sec-websocket-key", &vlen);
        if (key && plen > 5 && memcmp(target, "/app/", 5) == 0) return upgrade(c, key, vlen);
        return respond(c, plen == 1 ? "200 OK" : "404 Not Found", "{}");
    }
    if (sp - head == 4 && memcmp(head, "POST", 4) == 0 && plen > 6 && memcmp(target, "/apps/", 6) == 0) {
        int ok = ends_with(target, plen, "/batch_events") ? batch(body, body + blen)
                 : ends_with(target, plen, "/events")    ? trigger(body, body + blen)
                                                          : -1;
        if (ok >= 0) return respond(c, ok ? "200 OK" : "400 Bad Request", "{}");
    }
    respond(c, "404 Not Found", "{}");
}

static int http_feed(conn_t *c) {
    while (!c->ws && !c->dead && !c->close_after) {
        char *p = c->in.p, *end = c->in.len ? memmem(p, c->in.len, "\r\n\r\n", 4) : NULL;
        if (!end) return c->in.len > MAX_HEAD ? -1 : 0;
        size_t head = (size_t)(end - p) + 4, vlen, blen = 0;
        char *sp = memchr(p, ' ', head); /* the request line needs two spaces */
        if (!sp || !memchr(sp + 1, ' ', head - (size_t)(sp + 1 - p))) return -1;
        const char *v = header(p, end, "content-length", &vlen);
        if (v) blen = strtoul(v, NULL, 10);
        if (blen > MAX_FRAME) return -1;
        if (c->in.len < head + blen) return 0;
        request(c, p, end, p + head, blen);
        buf_drop(&c->in, head + blen);
    }
    return c->ws ? ws_feed(c) : 0;
}

static void on_readable(conn_t *c) {
    char chunk[65536];
    for (;;) {
        ssize_t n = recv(c->fd, chunk, sizeof chunk, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return kill_conn(c);
        if (n < 0) return;
        buf_add(&c->in, chunk, (size_t)n);
        if (http_feed(c) < 0) return kill_conn(c);
        if ((size_t)n < sizeof chunk || c->dead) return;
    }
}

static void on_accept(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fd >= capconns) {
            int old = capconns;
            conns = grow(conns, &capconns, fd + 1, sizeof *conns);
            memset(conns + old, 0, (size_t)(capconns - old) * sizeof *conns);
        }
        conn_t *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->fd = fd;
        conns[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: floor PORT\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 65535) < 0) {
        perror("floor: listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, events[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    fprintf(stderr, "floor: listening on 127.0.0.1:%s\n", argv[1]);
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                on_accept(lfd);
                continue;
            }
            conn_t *c = fd < capconns ? conns[fd] : NULL;
            if (!c || c->dead) continue;
            if (events[i].events & (EPOLLERR | EPOLLHUP)) kill_conn(c);
            else {
                if (events[i].events & EPOLLOUT) flush(c);
                if (events[i].events & EPOLLIN && !c->dead) on_readable(c);
            }
        }
        for (int i = 0; i < ndirty; i++) {
            conn_t *c = conns[dirty[i]];
            if (c && !c->dead && !c->want_out) flush(c);
        }
        ndirty = 0;
        for (int i = 0; i < ndead; i++) close_conn(dead[i]);
        ndead = 0;
    }
}
