// Small load tools for bench/run. One binary, five modes:
//   benchtool echo HOST PORT                 epoll echo server (one thread, holds any number of sockets)
//   benchtool conn HOST PORT WORKERS SECS    new connections/s: connect, send 1 byte, read it back, close
//   benchtool ping HOST PORT COUNT WARMUP    1-byte ping-pong RTT on one connection: p50/p99/mean in µs
//   benchtool ttfb HOST PORT COUNT WARMUP    time to first byte of a new connection, one at a time:
//                                            connect + 1-byte round trip, then close; p50/p99/mean in µs
//   benchtool hold HOST PORT                 reads target counts N from stdin; opens connections (each
//                                            echoes 1 byte) until N are open, then prints "ok N"; EOF closes all
// Built by bench/run with `cc -O2 -pthread`. Output is one line of key=value pairs.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in g_addr;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char* what) {
  perror(what);
  exit(1);
}

static int dial(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr*)&g_addr, sizeof g_addr) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends one byte and waits for it to come back; 0 on success.
static int echo_once(int fd) {
  char c = 'x';
  if (write(fd, &c, 1) != 1) return -1;
  ssize_t n;
  do {
    n = read(fd, &c, 1);
  } while (n < 0 && errno == EINTR);
  return n == 1 ? 0 : -1;
}

// --- echo server -----------------------------------------------------------------------------
static int run_echo(void) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(ls, (struct sockaddr*)&g_addr, sizeof g_addr) != 0) die("bind");
  if (listen(ls, 4096) != 0) die("listen");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  struct epoll_event evs[256];
  static char buf[65536];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0 && errno == EINTR) continue;
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        for (;;) {
          int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r > 0) {
        // Echo traffic is tiny (1 byte per round trip); a short write is not expected here.
        if (write(fd, buf, (size_t)r) < 0) {
          close(fd);
        }
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(fd);
      }
    }
  }
}

// --- conn/s ------------------------------------------------------------------------------------
struct conn_worker {
  pthread_t t;
  double until;
  uint64_t ok, failed;
};

static void* conn_main(void* arg) {
  struct conn_worker* w = arg;
  while (now_s() < w->until) {
    int fd = dial();
    if (fd < 0) {
      w->failed++;
      usleep(1000);
      continue;
    }
    if (echo_once(fd) == 0) {
      w->ok++;
    } else {
      w->failed++;
    }
    close(fd);
  }
  return NULL;
}

static int run_conn(int workers, double secs) {
  struct conn_worker* ws = calloc((size_t)workers, sizeof *ws);
  double start = now_s();
  for (int i = 0; i < workers; i++) {
    ws[i].until = start + secs;
    pthread_create(&ws[i].t, NULL, conn_main, &ws[i]);
  }
  uint64_t ok = 0, failed = 0;
  for (int i = 0; i < workers; i++) {
    pthread_join(ws[i].t, NULL);
    ok += ws[i].ok;
    failed += ws[i].failed;
  }
  double el = now_s() - start;
  printf("ok=%llu failed=%llu seconds=%.3f rate=%.1f\n", (unsigned long long)ok,
         (unsigned long long)failed, el, ok / el);
  return 0;
}

// --- ping-pong ---------------------------------------------------------------------------------
static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static int run_ping(int count, int warmup) {
  int fd = dial();
  if (fd < 0) die("connect");
  for (int i = 0; i < warmup; i++) {
    if (echo_once(fd) != 0) die("warmup echo");
  }
  double* rtt = malloc(sizeof(double) * (size_t)count);
  double sum = 0;
  for (int i = 0; i < count; i++) {
    double t0 = now_s();
    if (echo_once(fd) != 0) die("echo");
    rtt[i] = (now_s() - t0) * 1e6;
    sum += rtt[i];
  }
  qsort(rtt, (size_t)count, sizeof(double), cmp_double);
  printf("count=%d p50_us=%.1f p99_us=%.1f mean_us=%.1f\n", count, rtt[count / 2],
         rtt[(int)(count * 0.99)], sum / count);
  close(fd);
  return 0;
}

// --- time to first byte of a new connection -----------------------------------------------------
static int run_ttfb(int count, int warmup) {
  double* t = malloc(sizeof(double) * (size_t)count);
  double sum = 0;
  int failed = 0;
  for (int i = -warmup; i < count; i++) {
    double t0 = now_s();
    int fd = dial();
    if (fd < 0 || echo_once(fd) != 0) {
      if (fd >= 0) close(fd);
      if (++failed > 100) die("ttfb: too many failed connections");
      i--;
      usleep(1000);
      continue;
    }
    double us = (now_s() - t0) * 1e6;
    close(fd);
    if (i >= 0) {
      t[i] = us;
      sum += us;
    }
  }
  qsort(t, (size_t)count, sizeof(double), cmp_double);
  printf("count=%d failed=%d p50_us=%.1f p99_us=%.1f mean_us=%.1f\n", count, failed, t[count / 2],
         t[(int)(count * 0.99)], sum / count);
  free(t);
  return 0;
}

// --- hold idle connections ---------------------------------------------------------------------
static int run_hold(void) {
  int cap = 1024, open_n = 0, failures = 0;
  int* fds = malloc(sizeof(int) * (size_t)cap);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    int target = atoi(line);
    while (open_n < target) {
      int fd = dial();
      if (fd < 0 || echo_once(fd) != 0) {
        if (fd >= 0) close(fd);
        if (++failures > 200) {
          printf("fail open=%d errno=%d\n", open_n, errno);
          fflush(stdout);
          break;
        }
        usleep(10000);
        continue;
      }
      if (open_n == cap) {
        cap *= 2;
        fds = realloc(fds, sizeof(int) * (size_t)cap);
      }
      fds[open_n++] = fd;
    }
    printf("ok %d\n", open_n);
    fflush(stdout);
  }
  for (int i = 0; i < open_n; i++) close(fds[i]);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: benchtool echo|conn|ping|ttfb|hold HOST PORT ...\n");
    return 2;
  }
  memset(&g_addr, 0, sizeof g_addr);
  g_addr.sin_family = AF_INET;
  g_addr.sin_port = htons((uint16_t)atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &g_addr.sin_addr) != 1) die("address");
  if (!strcmp(argv[1], "echo")) return run_echo();
  if (!strcmp(argv[1], "conn") && argc >= 6) return run_conn(atoi(argv[4]), atof(argv[5]));
  if (!strcmp(argv[1], "ping") && argc >= 6) return run_ping(atoi(argv[4]), atoi(argv[5]));
  if (!strcmp(argv[1], "ttfb") && argc >= 6) return run_ttfb(atoi(argv[4]), atoi(argv[5]));
  if (!strcmp(argv[1], "hold")) return run_hold();
  fprintf(stderr, "bad arguments\n");
  return 2;
}
