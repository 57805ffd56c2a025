#include "spiffe_tunnel/base/drain.h"

#include <atomic>
#include <chrono>
#include <future>
#include <optional>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

using namespace std::chrono_literals;
using spiffe_tunnel::base::Drain;
using spiffe_tunnel::base::DrainToken;
using Clock = std::chrono::steady_clock;

TEST_CASE("drain: a drain nobody holds is released at once") {
  Drain drain;
  const auto start = Clock::now();
  CHECK(drain.wait_released(Clock::now() + 5s));
  CHECK(Clock::now() - start < 1s);
  CHECK(drain.held() == 0);
  bool called = false;
  drain.on_released([&] { called = true; });
  CHECK(called);
}

TEST_CASE("drain: tokens released on other threads end the wait") {
  Drain drain;
  std::vector<DrainToken> tokens;
  for (int i = 0; i < 8; ++i) {
    auto t = drain.acquire();
    REQUIRE(t);
    tokens.push_back(std::move(*t));
  }
  CHECK(drain.held() == 8);
  drain.begin();
  std::promise<void> go;
  std::shared_future<void> ready = go.get_future().share();
  std::vector<std::thread> holders;
  for (auto& token : tokens) {
    holders.emplace_back([ready, t = std::move(token)]() mutable {
      ready.wait();
      t.release();
    });
  }
  go.set_value();
  CHECK(drain.wait_released(Clock::now() + 10s));
  CHECK(drain.held() == 0);
  for (auto& h : holders) {
    h.join();
  }
}

TEST_CASE("drain: the wait gives up at the deadline and the tokens stay counted") {
  Drain drain;
  auto a = drain.acquire();
  auto b = drain.acquire();
  REQUIRE((a && b));
  const auto start = Clock::now();
  CHECK_FALSE(drain.wait_released(start + 50ms));
  CHECK(Clock::now() - start >= 50ms);
  CHECK(drain.held() == 2);
  a->release();
  CHECK(drain.held() == 1);
}

TEST_CASE("drain: the callback runs once, on the thread that releases the last token") {
  Drain drain;
  auto first = drain.acquire();
  auto last = drain.acquire();
  std::atomic<int> calls{0};
  std::thread::id ran_on;
  drain.on_released([&] {
    ++calls;
    ran_on = std::this_thread::get_id();
  });
  first->release();
  CHECK(calls == 0);
  std::thread releaser([t = std::move(*last)]() mutable { t.release(); });
  const auto releaser_id = releaser.get_id();
  releaser.join();
  CHECK(calls == 1);
  CHECK(ran_on == releaser_id);
  // Later tokens do not call it again.
  auto again = drain.acquire();
  again->release();
  CHECK(calls == 1);
}

TEST_CASE("drain: begin() twice is harmless and no token is handed out after it") {
  Drain drain;
  auto held = drain.acquire();
  CHECK_FALSE(drain.draining());
  drain.begin();
  drain.begin();
  CHECK(drain.draining());
  CHECK_FALSE(drain.acquire());
  CHECK(drain.held() == 1);
  held.reset();
  CHECK(drain.wait_released(Clock::now()));
}

TEST_CASE("drain: abort_all() asks every holder to end, and holders may release from it") {
  Drain drain;
  std::vector<DrainToken> tokens(3);
  std::vector<int> asked(3, 0);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    // Releasing from inside the abort function must not deadlock (it runs outside the lock).
    auto t = drain.acquire([&, i] {
      ++asked[i];
      tokens[i].release();
    });
    REQUIRE(t);
    tokens[i] = std::move(*t);
  }
  auto quiet = drain.acquire();  // no abort function: counted, never called
  drain.begin();
  drain.abort_all();
  CHECK(asked == std::vector<int>{1, 1, 1});
  CHECK(drain.held() == 1);
  drain.abort_all();  // twice: only the remaining holder is left, and it has nothing to call
  CHECK(asked == std::vector<int>{1, 1, 1});
  quiet->release();
  CHECK(drain.wait_released(Clock::now()));
}

TEST_CASE("drain: a token moves its hold, and releasing twice releases once") {
  Drain drain;
  auto made = drain.acquire();
  DrainToken a = std::move(*made);
  CHECK(a.held());
  CHECK_FALSE(made->held());
  DrainToken b;
  CHECK_FALSE(b.held());
  b = std::move(a);
  CHECK(drain.held() == 1);
  b.release();
  b.release();
  CHECK(drain.held() == 0);
}

TEST_CASE("drain: a token may outlive its drain") {
  std::optional<DrainToken> token;
  {
    Drain drain;
    token = drain.acquire();
  }
  token->release();  // no owner left to tell: nothing happens
  CHECK_FALSE(token->held());
}
