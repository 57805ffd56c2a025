#include "tunnel/handshake_limiter.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

using spiffe_tunnel::tunnel::HandshakeLimiter;

namespace {
std::string key(const char* address) {
  return HandshakeLimiter::source_key(asio::ip::make_address(address));
}
}  // namespace

TEST_CASE("handshake source keys: IPv4 by address, IPv6 by /64, mapped IPv4 as IPv4") {
  CHECK(key("127.0.0.2") == "v4:127.0.0.2");
  CHECK(key("::ffff:10.1.2.3") == "v4:10.1.2.3");
  CHECK(key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
  CHECK(key("2001:db8:1:2::1") == "v6:20010db800010002/64");
  CHECK(key("2001:db8:1:3::1") != key("2001:db8:1:2::1"));
}

TEST_CASE("handshake limiter caps each source and the whole tunnel") {
  auto limiter = std::make_shared<HandshakeLimiter>();
  std::vector<HandshakeLimiter::Slot> held;
  const std::string a = key("127.0.0.2"), b = key("127.0.0.3");
  for (int i = 0; i < 3; ++i) {
    auto r = limiter->try_acquire(a, 5, 3);
    REQUIRE(r.slot);
    held.push_back(std::move(*r.slot));
  }
  auto over = limiter->try_acquire(a, 5, 3);
  CHECK_FALSE(over.slot);
  CHECK(over.refused == "per_source");
  CHECK(limiter->in_flight(a) == 3);
  // Another source still gets in, until the global limit.
  for (int i = 0; i < 2; ++i) {
    auto r = limiter->try_acquire(b, 5, 3);
    REQUIRE(r.slot);
    held.push_back(std::move(*r.slot));
  }
  auto full = limiter->try_acquire(key("127.0.0.4"), 5, 3);
  CHECK_FALSE(full.slot);
  CHECK(full.refused == "global");
  // Unix sockets (no key) count only globally.
  held.pop_back();
  auto unix_peer = limiter->try_acquire("", 5, 3);
  CHECK(unix_peer.slot);
  unix_peer.slot.reset();
  // Releasing a slot frees its source; the empty source entry goes away.
  held.front().release();
  held.front().release();  // twice is harmless
  CHECK(limiter->in_flight(a) == 2);
  held.clear();
  CHECK(limiter->in_flight() == 0);
  CHECK(limiter->in_flight(a) == 0);
}

TEST_CASE("handshake limiter slots outlive their owner's other references and race cleanly") {
  auto limiter = std::make_shared<HandshakeLimiter>();
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::string k = key(t % 2 ? "127.0.0.2" : "127.0.0.3");
      for (int i = 0; i < 2000; ++i) {
        auto r = limiter->try_acquire(k, 1000, 1000);
        if (r.slot) {
          ++admitted;
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  CHECK(admitted == 8000);
  CHECK(limiter->in_flight() == 0);
  auto r = limiter->try_acquire(key("127.0.0.2"), 1, 1);
  REQUIRE(r.slot);
  HandshakeLimiter::Slot slot = std::move(*r.slot);
  limiter.reset();  // the slot keeps the accounting alive
  slot.release();
}
