#include "spiffe_tunnel/pump/pump.h"

#include <sys/socket.h>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/byte_stream.h"
#include "tls/test_tls.h"

// g++ 12 may evaluate a co_await twice when it sits inside an assertion macro's expression, so
// every co_await below stores its result before a CHECK looks at it.

using namespace std::chrono_literals;
using namespace spiffe_tunnel;
using spiffe_tunnel::tls::testing::connected_pair;
using spiffe_tunnel::tls::testing::rethrow;
using spiffe_tunnel::tls::testing::run_bounded;
using Catch::Matchers::Contains;
using Socket = asio::ip::tcp::socket;

namespace {

// app_a <-> [a  pump  b] <-> app_b: the pump sits between two loopback connections; the test
// plays both applications with the far ends.
struct Harness {
  asio::io_context io;
  Socket app_a{io};
  Socket app_b{io};
  std::optional<base::TcpStream> a;
  std::optional<base::TcpStream> b;
  std::optional<pump::PumpResult> result;
  int activity = 0;
  base::Counter live_a_to_b;
  base::Counter live_b_to_a;

  Harness() {
    auto [a_far, a_near] = connected_pair(io);
    auto [b_far, b_near] = connected_pair(io);
    app_a = std::move(a_far);
    app_b = std::move(b_far);
    a.emplace(std::move(a_near));
    b.emplace(std::move(b_near));
  }

  void start(bool allow_splice) {
    pump::PumpOptions options;
    options.allow_splice = allow_splice;
    options.buffer_size = 64 * 1024;
    options.on_activity = [this] { ++activity; };
    options.a_to_b_bytes = &live_a_to_b;
    options.b_to_a_bytes = &live_b_to_a;
    asio::co_spawn(
        io,
        [this, options]() -> asio::awaitable<void> {
          result = co_await pump::pump_both(*a, *b, options);
        },
        rethrow);
  }
};

std::string pattern(std::size_t size, uint32_t seed) {
  std::string out(size, '\0');
  uint32_t x = seed;
  for (auto& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

// FNV-1a, enough to compare megabytes without printing them.
uint64_t hash_of(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h = (h ^ c) * 1099511628211ull;
  }
  return h;
}

// Reads until end of stream; returns what came and the error that ended it, if any.
asio::awaitable<std::string> read_to_end(Socket& s, asio::error_code& ec) {
  std::string out;
  char buf[65536];
  for (;;) {
    const std::size_t n = co_await s.async_read_some(
        asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::eof) {
        ec.clear();
      }
      co_return out;
    }
    out.append(buf, n);
  }
}

// Takes `data` by value: the coroutine outlives the caller's full-expression.
asio::awaitable<void> write_and_close(Socket& s, std::string data) {
  asio::error_code ec;
  co_await asio::async_write(s, asio::buffer(data), asio::redirect_error(asio::use_awaitable, ec));
  REQUIRE_FALSE(ec);
  s.shutdown(Socket::shutdown_send, ec);
  REQUIRE_FALSE(ec);
}

// Makes the next close of `s` send a TCP RST instead of a FIN.
void reset_on_close(Socket& s) {
  s.set_option(asio::socket_base::linger(true, 0));
}

}  // namespace

TEST_CASE("the pump moves megabytes both ways intact and reports the path it took") {
  const bool splice = GENERATE(true, false);
  INFO("allow_splice=" << splice);
  Harness h;
  h.start(splice);
  const std::string to_b = pattern(3 * 1024 * 1024 + 5, 1);
  const std::string to_a = pattern(2 * 1024 * 1024 + 11, 2);
  std::string got_b;
  std::string got_a;
  asio::co_spawn(h.io, write_and_close(h.app_a, to_b), rethrow);
  asio::co_spawn(h.io, write_and_close(h.app_b, to_a), rethrow);
  asio::co_spawn(
      h.io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        got_b = co_await read_to_end(h.app_b, ec);
        CHECK_FALSE(ec);
      },
      rethrow);
  asio::co_spawn(
      h.io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        got_a = co_await read_to_end(h.app_a, ec);
        CHECK_FALSE(ec);
      },
      rethrow);
  run_bounded(h.io, 20s);

  CHECK(got_b.size() == to_b.size());
  CHECK(hash_of(got_b) == hash_of(to_b));
  CHECK(got_a.size() == to_a.size());
  CHECK(hash_of(got_a) == hash_of(to_a));
  REQUIRE(h.result);
  const pump::Path expected = splice ? pump::Path::kSplice : pump::Path::kUserspace;
  for (const auto* d : {&h.result->a_to_b, &h.result->b_to_a}) {
    CHECK(d->path == expected);
    CHECK(d->clean_end);
    CHECK(d->error.empty());
    CHECK_FALSE(d->failed_first);
  }
  CHECK(h.result->a_to_b.bytes == to_b.size());
  CHECK(h.result->b_to_a.bytes == to_a.size());
  CHECK(h.live_a_to_b.value() == to_b.size());
  CHECK(h.live_b_to_a.value() == to_a.size());
  CHECK(h.activity > 0);
}

TEST_CASE("live byte counters follow the bytes while both directions are still open") {
  const bool splice = GENERATE(true, false);
  INFO("allow_splice=" << splice);
  Harness h;
  h.start(splice);
  const std::string data = pattern(1024 * 1024 + 3, 3);
  uint64_t while_open = 0;
  bool pump_running = false;
  asio::co_spawn(
      h.io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        co_await asio::async_write(h.app_a, asio::buffer(data),
                                   asio::redirect_error(asio::use_awaitable, ec));
        REQUIRE_FALSE(ec);
        std::string got(data.size(), '\0');
        co_await asio::async_read(h.app_b, asio::buffer(got),
                                  asio::redirect_error(asio::use_awaitable, ec));
        REQUIRE_FALSE(ec);
        // The pump counts a chunk once its write returned, which may be just after the reader
        // here woke up: give it a few turns.
        asio::steady_timer t(h.io);
        for (int i = 0; i < 200 && h.live_a_to_b.value() < data.size(); ++i) {
          t.expires_after(1ms);
          co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
        while_open = h.live_a_to_b.value();
        pump_running = !h.result.has_value();
        co_await write_and_close(h.app_a, "");
        co_await write_and_close(h.app_b, "");
        co_await read_to_end(h.app_b, ec);
        co_await read_to_end(h.app_a, ec);
      },
      rethrow);
  run_bounded(h.io, 20s);
  CHECK(pump_running);
  CHECK(while_open == data.size());
  REQUIRE(h.result);
  CHECK(h.live_a_to_b.value() == h.result->a_to_b.bytes);
  CHECK(h.live_b_to_a.value() == 0);
}

TEST_CASE("plain TCP streams let the kernel own both directions") {
  asio::io_context io;
  auto [x, y] = connected_pair(io);
  base::TcpStream s(std::move(x));
  CHECK(s.kernel_reads());
  CHECK(s.kernel_writes());
  CHECK_FALSE(s.has_buffered_input());
}

TEST_CASE("a half-close passes through and the other direction keeps flowing") {
  const bool splice = GENERATE(true, false);
  INFO("allow_splice=" << splice);
  Harness h;
  h.start(splice);
  bool done = false;
  asio::co_spawn(
      h.io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        // a's application says all it has to say and half-closes.
        co_await write_and_close(h.app_a, "request");
        // b's application sees the request, then end of stream...
        const std::string request = co_await read_to_end(h.app_b, ec);
        CHECK_FALSE(ec);
        CHECK(request == "request");
        // ...and answers at length afterwards, which a still receives.
        const std::string answer = pattern(512 * 1024, 3);
        co_await write_and_close(h.app_b, answer);
        const std::string got = co_await read_to_end(h.app_a, ec);
        CHECK_FALSE(ec);
        CHECK(hash_of(got) == hash_of(answer));
        done = true;
      },
      rethrow);
  run_bounded(h.io);
  CHECK(done);
  REQUIRE(h.result);
  CHECK(h.result->a_to_b.clean_end);
  CHECK(h.result->a_to_b.bytes == 7);
  CHECK(h.result->b_to_a.clean_end);
  CHECK(h.result->b_to_a.bytes == 512 * 1024);
}

TEST_CASE("a reset on one side aborts both directions and blames the direction it hit") {
  const bool splice = GENERATE(true, false);
  INFO("allow_splice=" << splice);
  Harness h;
  h.start(splice);
  asio::error_code a_end;
  bool done = false;
  asio::co_spawn(
      h.io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        // Some traffic first, so both directions are running.
        co_await asio::async_write(h.app_b, asio::buffer(std::string_view("hello")),
                                   asio::redirect_error(asio::use_awaitable, ec));
        REQUIRE_FALSE(ec);
        char buf[5];
        co_await asio::async_read(h.app_a, asio::buffer(buf),
                                  asio::redirect_error(asio::use_awaitable, ec));
        REQUIRE_FALSE(ec);
        // b's application aborts.
        reset_on_close(h.app_b);
        h.app_b.close();
        // a's application sees its connection end too (the pump closed it).
        const std::string rest = co_await read_to_end(h.app_a, a_end);
        CHECK(rest.empty());
        done = true;
      },
      rethrow);
  run_bounded(h.io);
  CHECK(done);
  REQUIRE(h.result);
  const pump::DirectionResult& from_b = h.result->b_to_a;
  const pump::DirectionResult& from_a = h.result->a_to_b;
  CHECK(from_b.failed_first);
  CHECK(from_b.failed_reading);  // the reset was read from b, not hit writing to a
  CHECK_FALSE(from_b.clean_end);
  CHECK_THAT(from_b.error, Contains("reset"));
  CHECK(from_b.bytes == 5);
  CHECK_FALSE(from_a.failed_first);
  CHECK_FALSE(from_a.clean_end);
  CHECK_FALSE(from_a.error.empty());
}

TEST_CASE("on_activity is called as bytes move") {
  Harness h;
  h.start(false);
  asio::co_spawn(h.io, write_and_close(h.app_a, "x"), rethrow);
  asio::co_spawn(h.io, write_and_close(h.app_b, "y"), rethrow);
  std::string got_a;
  std::string got_b;
  asio::co_spawn(
      h.io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        got_b = co_await read_to_end(h.app_b, ec);
        got_a = co_await read_to_end(h.app_a, ec);
      },
      rethrow);
  run_bounded(h.io);
  CHECK(got_a == "y");
  CHECK(got_b == "x");
  CHECK(h.activity == 2);
}

TEST_CASE("path names are the ones logged and counted") {
  CHECK(pump::path_name(pump::Path::kSplice) == "ktls+splice");
  CHECK(pump::path_name(pump::Path::kUserspace) == "userspace");
}
