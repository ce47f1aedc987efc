/*
 * httpgen: a closed-loop HTTP/1.1 load generator for the benchmark's http scenario.
 *
 * One thread, one epoll loop, libc only, so that it is never the bottleneck the way a Python
 * client would be. CONNS connections each write the same pre-built request (signed by the
 * Python side, as the Pusher SDKs sign theirs), read the answer (status line and
 * Content-Length body), count it and send the next, for SECONDS.
 *
 *   keepalive  the connection is reused, as the SDKs' sessions and agents do; a server that
 *              answers "Connection: close" or closes gets a new connection (counted).
 *   close      a new TCP connection per request: close after every answer, then reconnect.
 *
 * Usage: httpgen HOST PORT CONNS SECONDS keepalive|close REQUEST_FILE
 * Prints one JSON object: sent, ok (2xx), non2xx, errors, reconnects, statuses, started_ns,
 * finished_ns (CLOCK_MONOTONIC), cpu_seconds (its own user + system time).
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd, connected, out_armed; /* out_armed: EPOLLOUT is in its epoll events */
    size_t written; /* bytes of the request written */
    char in[65536];
    size_t got; /* bytes of the answer read */
} conn_t;

static char *req;
static size_t req_len;
static struct sockaddr_in addr;
static int ep, reconnect_each;
static long sent, ok, non2xx, errors, reconnects, statuses[600];
static int64_t started, finished, deadline;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int open_conn(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->connected = 0, c->written = 0, c->got = 0, c->out_armed = 1;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void drop(conn_t *c) {
    if (c->fd >= 0) close(c->fd); /* closing removes it from the epoll set */
    c->fd = -1;
}

static void reopen(conn_t *c) {
    drop(c);
    if (now_ns() < deadline && open_conn(c) == 0) reconnects++;
}

static void write_request(conn_t *c) {
    while (c->written < req_len) {
        ssize_t n = send(c->fd, req + c->written, req_len - c->written, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            errors++;
            return reopen(c);
        }
        if (c->written == 0) sent++;
        c->written += (size_t)n;
    }
    int arm = c->written < req_len;
    if (arm != c->out_armed) { /* a system call only when the interest changes */
        struct epoll_event ev = {.events = EPOLLIN | (arm ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->out_armed = arm;
    }
}

/* 1: a whole answer is in c->in (counted); 0: not yet; -1: not HTTP. */
static int answer(conn_t *c, int *close_after) {
    char *end = memmem(c->in, c->got, "\r\n\r\n", 4);
    if (!end) return c->got == sizeof c->in ? -1 : 0;
    size_t head = (size_t)(end - c->in) + 4, body = 0;
    if (c->got < 12 || memcmp(c->in, "HTTP/1.", 7) != 0) return -1;
    for (char *line = memmem(c->in, head, "\r\n", 2); line && line < end;
         line = memmem(line + 2, (size_t)(end - line), "\r\n", 2)) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) body = strtoul(line + 17, NULL, 10);
        if (strncasecmp(line + 2, "connection: close", 17) == 0) *close_after = 1;
    }
    if (head + body > sizeof c->in) return -1;
    if (c->got < head + body) return 0;
    int status = atoi(c->in + 9);
    if (status >= 200 && status < 300) ok++;
    else non2xx++;
    if (status >= 100 && status < 600) statuses[status]++;
    finished = now_ns();
    memmove(c->in, c->in + head + body, c->got - head - body);
    c->got -= head + body;
    return 1;
}

static void on_readable(conn_t *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->got, sizeof c->in - c->got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            /* Closed with no answer begun: the server ended a kept-alive connection. */
            if (c->got || c->written < req_len || n < 0) errors++;
            else sent--; /* the server ended a kept-alive connection: sent again */
            return reopen(c);
        }
        c->got += (size_t)n;
        int close_after = reconnect_each, done = answer(c, &close_after);
        if (done < 0) {
            errors++;
            return reopen(c);
        }
        if (done == 0) continue;
        if (close_after) return reopen(c);
        c->written = 0;
        if (now_ns() < deadline) write_request(c);
        else drop(c);
        return;
    }
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: httpgen HOST PORT CONNS SECONDS keepalive|close REQUEST_FILE\n");
        return 2;
    }
    int conns = atoi(argv[3]);
    reconnect_each = strcmp(argv[5], "close") == 0;
    FILE *f = fopen(argv[6], "rb");
    if (!f || conns < 1) {
        perror("httpgen");
        return 2;
    }
    req = malloc(1 << 20);
    req_len = fread(req, 1, 1 << 20, f);
    fclose(f);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    ep = epoll_create1(EPOLL_CLOEXEC);
    conn_t *pool = calloc((size_t)conns, sizeof *pool);
    started = finished = now_ns();
    deadline = started + (int64_t)(atof(argv[4]) * 1e9);
    int open = 0;
    for (int i = 0; i < conns; i++) open += open_conn(&pool[i]) == 0;
    if (!open) {
        perror("httpgen: connect");
        return 1;
    }
    struct epoll_event events[256];
    /* After the deadline no request is sent; the answers in flight are awaited (up to 10 s). */
    for (int64_t limit = deadline + 10000000000LL; now_ns() < limit;) {
        int live = 0;
        for (int i = 0; i < conns; i++) live += pool[i].fd >= 0;
        if (!live) break;
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (!c->connected && events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    errors++;
                    reopen(c);
                    continue;
                }
                c->connected = 1;
                write_request(c);
                continue;
            }
            if (events[i].events & EPOLLOUT && c->written < req_len) write_request(c);
            if (c->fd >= 0 && events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("{\"sent\":%ld,\"ok\":%ld,\"non2xx\":%ld,\"errors\":%ld,\"reconnects\":%ld,\"statuses\":{",
           sent, ok, non2xx, errors, reconnects);
    for (int s = 100, first = 1; s < 600; s++)
        if (statuses[s] && s / 100 != 2) printf("%s\"%d\":%ld", first ? "" : ",", s, statuses[s]), first = 0;
    printf("},\"started_ns\":%lld,\"finished_ns\":%lld,\"cpu_seconds\":%.6f}\n", (long long)started,
           (long long)finished, cpu);
    return 0;
}
