/* The bench's POP3 load client: login, STAT, LIST, UIDL, RETR of every
 * message (DEPTH commands in flight), QUIT; SESSIONS such sessions one
 * after another.
 *
 *   pop3load PORT USER PASSWORD DEPTH SESSIONS
 *
 * Prints "messages octets seconds" (sums over the sessions; seconds from
 * each connect to its QUIT's answer) and exits 0, or prints what went
 * wrong and exits 1.
 *
 * Why C and not the Python client (bench/pop3load.py): with 16 RETRs in
 * flight the Python client spent about 8 us per message, as much as the
 * server under test, so the rate measured both. This one spends well under
 * a microsecond of its own per 4 KiB message and leaves the servers'
 * difference to be seen.
 *
 * Pipelined (RFC 2449 6.6): after each read from the socket the client
 * takes every answer that is wholly in its buffer, then sends the RETRs
 * those answers freed in one write, so DEPTH are in flight again. A
 * multi-line answer (RFC 1939 3) ends with a line holding only "."; a data
 * line that starts with "." has one more "." in front (byte-stuffing),
 * which does not count toward the message's size. Every size is checked
 * against LIST and the count against STAT, so a lost or wrong answer fails
 * the run instead of counting as fast. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define RECV (256 * 1024)

struct conn {
    int fd;
    char *buf;
    size_t cap, pos, len; /* unconsumed data is buf[pos..len) */
};

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* One read from the socket onto the end of the buffer, moving what is
 * left to the front (or growing the buffer) so that RECV bytes fit. */
static void fill(struct conn *c)
{
    if (c->cap - c->len < RECV) {
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
        if (c->cap - c->len < RECV) {
            c->cap = 2 * c->cap + RECV;
            if (!(c->buf = realloc(c->buf, c->cap)))
                die("out of memory");
        }
    }
    ssize_t n;
    do
        n = read(c->fd, c->buf + c->len, RECV);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        die("read: %s", strerror(errno));
    if (n == 0)
        die("connection closed");
    c->len += (size_t)n;
}

static void send_all(struct conn *c, const char *data, size_t n)
{
    while (n) {
        ssize_t w = write(c->fd, data, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            die("write: %s", strerror(errno));
        data += w;
        n -= (size_t)w;
    }
}

/* The failing answer's first line, for the error message. */
static void die_err(struct conn *c, size_t at, const char *what)
{
    char *eol = memmem(c->buf + at, c->len - at, "\r\n", 2);
    int n = eol ? (int)(eol - (c->buf + at)) : (int)(c->len - at);
    die("%s: %.*s", what, n > 200 ? 200 : n, c->buf + at);
}

/* The next status line (without CRLF, NUL-terminated in place); exits on
 * anything but +OK. */
static char *status(struct conn *c, const char *what)
{
    char *eol;
    while (!(eol = memmem(c->buf + c->pos, c->len - c->pos, "\r\n", 2)))
        fill(c);
    char *line = c->buf + c->pos;
    if (strncmp(line, "+OK", 3) != 0)
        die_err(c, c->pos, what);
    *eol = '\0';
    c->pos = (size_t)(eol + 2 - c->buf);
    return line;
}

static char *command(struct conn *c, const char *line)
{
    send_all(c, line, strlen(line));
    send_all(c, "\r\n", 2);
    return status(c, line);
}

/* When the next multi-line answer is wholly in the buffer: consumes it,
 * sets [*start, *end) to its data (still byte-stuffed, CRLF line ends,
 * without the "." line) and returns 1. Else consumes nothing and returns 0.
 * Exits on -ERR. */
static int take_body(struct conn *c, size_t *start, size_t *end, const char *what)
{
    char *base = c->buf;
    char *eol = memmem(base + c->pos, c->len - c->pos, "\r\n", 2);
    if (!eol)
        return 0;
    if (strncmp(base + c->pos, "+OK", 3) != 0)
        die_err(c, c->pos, what);
    size_t s = (size_t)(eol + 2 - base);
    if (c->len - s < 3)
        return 0;
    if (memcmp(base + s, ".\r\n", 3) == 0) {
        *start = *end = s;
        c->pos = s + 3;
        return 1;
    }
    /* Not "." at once, so the data has a first line, and the end is the
     * first CRLF "." CRLF after it. */
    char *e = memmem(base + s, c->len - s, "\r\n.\r\n", 5);
    if (!e)
        return 0;
    *start = s;
    *end = (size_t)(e + 2 - base);
    c->pos = *end + 3;
    return 1;
}

/* A whole multi-line answer, waiting for it. */
static void body(struct conn *c, size_t *start, size_t *end, const char *what)
{
    while (!take_body(c, start, end, what))
        fill(c);
}

/* Octets of [start, end) once unstuffed: one fewer per line that begins
 * with "..". */
static size_t unstuffed(const struct conn *c, size_t start, size_t end)
{
    const char *p = c->buf + start, *stop = c->buf + end;
    size_t n = (size_t)(stop - p);
    if (n >= 2 && p[0] == '.' && p[1] == '.')
        n--;
    while ((p = memmem(p, (size_t)(stop - p), "\r\n..", 4))) {
        n--;
        p += 4;
    }
    return n;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        die("connect to port %d: %s", port, strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval timeout = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    return fd;
}

/* One session; adds to *messages and *octets. */
static void session(int port, const char *user, const char *password, long depth,
                    long *messages, long *octets)
{
    struct conn c = {.fd = dial(port), .cap = 4 * RECV};
    if (!(c.buf = malloc(c.cap)))
        die("out of memory");
    char line[1024];
    status(&c, "greeting");
    snprintf(line, sizeof line, "USER %s", user);
    command(&c, line);
    snprintf(line, sizeof line, "PASS %s", password);
    command(&c, line);
    long count = strtol(command(&c, "STAT") + 3, NULL, 10);

    size_t s, e;
    send_all(&c, "LIST\r\n", 6);
    body(&c, &s, &e, "LIST");
    long *sizes = calloc((size_t)count + 1, sizeof *sizes);
    if (!sizes)
        die("out of memory");
    long listed = 0;
    /* Each line "n size" CRLF (the data ends in CRLF, so each has one). */
    for (char *p = c.buf + s, *stop = c.buf + e; p < stop; listed++) {
        char *eol = memmem(p, (size_t)(stop - p), "\r\n", 2), *next;
        long n = strtol(p, &next, 10), size = strtol(next, &next, 10);
        if (n != listed + 1 || n > count || size < 0 || next != eol)
            die("LIST line %ld: %.*s", listed + 1, eol - p > 200 ? 200 : (int)(eol - p), p);
        sizes[n] = size;
        p = eol + 2;
    }
    send_all(&c, "UIDL\r\n", 6);
    body(&c, &s, &e, "UIDL");
    long uids = 0;
    for (char *p = c.buf + s; (p = memmem(p, (size_t)(c.buf + e - p), "\r\n", 2)); p += 2)
        uids++;
    if (listed != count || uids != count)
        die("STAT says %ld, LIST %ld, UIDL %ld", count, listed, uids);

    /* RETR 1..count, `depth` in flight; sent = highest number asked for. */
    char *out = malloc((size_t)depth * 24);
    if (!out)
        die("out of memory");
    long sent = 0, done = 0;
    size_t n = 0;
    for (; sent < depth && sent < count; sent++)
        n += (size_t)sprintf(out + n, "RETR %ld\r\n", sent + 1);
    send_all(&c, out, n);
    while (done < count) {
        long freed = 0;
        while (take_body(&c, &s, &e, "RETR")) {
            done++;
            size_t size = unstuffed(&c, s, e);
            if (done > sent || (long)size != sizes[done])
                die("RETR %ld: %zu octets, LIST said %ld", done, size, done > count ? -1 : sizes[done]);
            *octets += (long)size;
            freed++;
        }
        if (!freed) {
            fill(&c);
            continue;
        }
        for (n = 0; freed-- && sent < count; sent++)
            n += (size_t)sprintf(out + n, "RETR %ld\r\n", sent + 1);
        if (n)
            send_all(&c, out, n);
    }
    command(&c, "QUIT");
    *messages += count;
    close(c.fd);
    free(out);
    free(sizes);
    free(c.buf);
}

int main(int argc, char **argv)
{
    if (argc != 6)
        die("usage: pop3load PORT USER PASSWORD DEPTH SESSIONS");
    int port = atoi(argv[1]);
    long depth = atol(argv[4]), sessions = atol(argv[5]);
    if (port <= 0 || port > 65535 || depth < 1 || depth > 4096 || sessions < 1)
        die("pop3load: bad PORT, DEPTH or SESSIONS");
    long messages = 0, octets = 0;
    double secs = 0;
    for (long i = 0; i < sessions; i++) {
        double t0 = now();
        session(port, argv[2], argv[3], depth, &messages, &octets);
        secs += now() - t0;
    }
    printf("%ld %ld %.6f\n", messages, octets, secs);
    return 0;
}
