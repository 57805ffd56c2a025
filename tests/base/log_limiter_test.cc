#include "spiffe_tunnel/base/log_limiter.h"

#include <chrono>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

using namespace std::chrono_literals;
using spiffe_tunnel::base::AcceptBackoff;
using spiffe_tunnel::base::LogRateLimiter;

TEST_CASE("log limiter lets N lines a second through per key and counts the rest") {
  LogRateLimiter limiter(3);
  const auto t0 = LogRateLimiter::Clock::time_point{} + 100s;
  for (int i = 0; i < 3; ++i) {
    const auto d = limiter.admit("handshake_limit", t0 + std::chrono::milliseconds(i));
    CHECK(d.log);
    CHECK(d.suppressed_before == 0);
  }
  for (int i = 0; i < 5; ++i) {
    CHECK_FALSE(limiter.admit("handshake_limit", t0 + 500ms).log);
  }
  // Another key has its own budget.
  CHECK(limiter.admit("max_connections", t0 + 500ms).log);
  // The next window: the first line carries the count of the left-out ones, once.
  auto d = limiter.admit("handshake_limit", t0 + 1000ms);
  CHECK(d.log);
  CHECK(d.suppressed_before == 5);
  d = limiter.admit("handshake_limit", t0 + 1001ms);
  CHECK(d.log);
  CHECK(d.suppressed_before == 0);
}

TEST_CASE("log limiter is safe from many threads and loses no count") {
  LogRateLimiter limiter(10);
  const auto now = LogRateLimiter::Clock::now();
  std::atomic<int> logged{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (limiter.admit("k", now).log) {
          ++logged;
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  CHECK(logged == 10);
  const auto d = limiter.admit("k", now + 1s);
  CHECK(d.suppressed_before == 4000 - 10);
}

TEST_CASE("accept back-off doubles from 10 ms to 1 s and resets") {
  AcceptBackoff b;
  std::vector<long> seen;
  for (int i = 0; i < 9; ++i) {
    seen.push_back(static_cast<long>(b.next().count()));
  }
  CHECK(seen == std::vector<long>{10, 20, 40, 80, 160, 320, 640, 1000, 1000});
  CHECK(b.reset() == 9);
  CHECK(b.next() == 10ms);
}
