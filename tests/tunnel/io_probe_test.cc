#include "spiffe_tunnel/tunnel/io_probe.h"

#include <asio/post.hpp>

#include <chrono>
#include <future>
#include <thread>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/tunnel/io_pool.h"

using namespace std::chrono_literals;
using spiffe_tunnel::tunnel::IoPool;
using spiffe_tunnel::tunnel::IoProbe;

namespace {

// Calls check() every 10 ms until it returns `want`, for at most `limit`; returns the last result.
bool check_until(IoProbe& probe, bool want, std::chrono::milliseconds limit = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool alive = probe.check();
  while (alive != want && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);  // polling a real thread: the probe runs on its own time
    alive = probe.check();
  }
  return alive;
}

}  // namespace

TEST_CASE("a data thread blocked in a handler is reported stuck, by index, until it runs again") {
  IoPool pool(3);
  pool.start();
  IoProbe probe(pool, 150ms);
  REQUIRE(check_until(probe, true));

  // Fault injection: a handler that blocks thread 1 until released.
  std::promise<void> release;
  asio::post(pool.at(1), [f = release.get_future()]() mutable { f.wait(); });

  REQUIRE_FALSE(check_until(probe, false));
  CHECK(probe.stuck() == std::vector<std::size_t>{1});
  // Threads 0 and 2 keep answering while 1 stays stuck.
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(probe.check());
  CHECK(probe.stuck() == std::vector<std::size_t>{1});

  release.set_value();
  CHECK(check_until(probe, true));
  CHECK(probe.stuck().empty());
  pool.stop();
}

TEST_CASE("a probe still queued when the IoProbe is destroyed runs harmlessly") {
  IoPool pool(1);
  std::promise<void> release;
  asio::post(pool.at(0), [f = release.get_future()]() mutable { f.wait(); });
  pool.start();
  {
    IoProbe probe(pool, 1s);
    probe.check();  // queued behind the blocking handler
  }
  release.set_value();
  std::promise<void> after;
  asio::post(pool.at(0), [&after] { after.set_value(); });
  CHECK(after.get_future().wait_for(5s) == std::future_status::ready);
  pool.stop();
}
