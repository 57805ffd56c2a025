// The systemd watchdog as the daemon drives it: a real notify socket, a real IoPool, and one
// data thread blocked by a handler (fault injection). Pings stop while the thread is stuck and
// resume when it runs again.
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <asio/post.hpp>

#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

#include "app/systemd_notify.h"
#include "spiffe_tunnel/tunnel/io_pool.h"
#include "spiffe_tunnel/tunnel/io_probe.h"
#include "test_support/temp_dir.h"

using namespace std::chrono_literals;
using spiffe_tunnel::app::SystemdNotifier;
using spiffe_tunnel::tunnel::IoPool;
using spiffe_tunnel::tunnel::IoProbe;

namespace {

// The receiving end of NOTIFY_SOCKET, as systemd binds it.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_DGRAM, 0)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  ~NotifySocket() { ::close(fd_); }
  // Reads every datagram waiting; returns how many were WATCHDOG=1.
  int take_pings() {
    int pings = 0;
    char buf[512];
    for (ssize_t n; (n = ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT)) > 0;) {
      pings += std::string(buf, static_cast<std::size_t>(n)) == "WATCHDOG=1" ? 1 : 0;
    }
    return pings;
  }

 private:
  int fd_;
};

// Sets an environment variable for the lifetime of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

// The daemon's main loop for `span`, at its 200 ms-or-less tick: ping only if the probe passes.
void run_main_loop(IoProbe& probe, SystemdNotifier& notifier, std::chrono::milliseconds span) {
  const auto end = std::chrono::steady_clock::now() + span;
  while (std::chrono::steady_clock::now() < end) {
    if (probe.check()) {
      notifier.watchdog();
    }
    std::this_thread::sleep_for(20ms);  // the tick of the loop under test
  }
}

}  // namespace

#ifdef SPIFFE_TUNNEL_HAVE_SYSTEMD  // without libsystemd the notifier is a no-op
TEST_CASE("the watchdog is pinged only while every data-path thread runs its probes") {
  spiffe_tunnel::testing::TempDir dir("st-watchdog");
  const std::string path = dir.path("notify");
  NotifySocket sock(path);
  // As systemd starts a service; sd_notify() reads NOTIFY_SOCKET at every call.
  ScopedEnv notify_socket("NOTIFY_SOCKET", path);
  ScopedEnv watchdog_usec("WATCHDOG_USEC", "400000");  // WatchdogSec=400ms: a ping every 200 ms
  ::unsetenv("WATCHDOG_PID");
  SystemdNotifier notifier;
  REQUIRE(notifier.watchdog_interval() == 400ms);
  REQUIRE(spiffe_tunnel::app::data_path_probe_limit(notifier) == 200ms);

  IoPool pool(2);
  pool.start();
  IoProbe probe(pool, spiffe_tunnel::app::data_path_probe_limit(notifier));

  run_main_loop(probe, notifier, 1s);
  const int healthy = sock.take_pings();
  CHECK(healthy >= 3);

  std::promise<void> release;
  asio::post(pool.at(1), [f = release.get_future()]() mutable { f.wait(); });
  run_main_loop(probe, notifier, 500ms);  // the probe limit passes: the thread counts as stuck
  sock.take_pings();
  run_main_loop(probe, notifier, 1s);
  CHECK(sock.take_pings() == 0);
  CHECK(probe.stuck() == std::vector<std::size_t>{1});

  release.set_value();
  run_main_loop(probe, notifier, 1s);
  CHECK(sock.take_pings() >= 2);
  pool.stop();
}
#endif
