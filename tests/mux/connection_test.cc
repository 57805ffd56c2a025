#include "spiffe_tunnel/mux/connection.h"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/byte_stream.h"
#include "tls/test_tls.h"

// g++ 12 may evaluate a co_await twice when it sits inside an assertion macro's expression, so
// every co_await below stores its result before a CHECK looks at it.

using namespace spiffe_tunnel;
using spiffe_tunnel::tls::testing::connected_pair;
using spiffe_tunnel::tls::testing::rethrow;
using spiffe_tunnel::tls::testing::run_bounded;

namespace {

std::vector<std::pair<std::string, std::string>> no_headers() { return {}; }

// Reads `s` until end of stream (or an error, returned in `ec`).
asio::awaitable<std::string> read_all(base::ByteStream& s, asio::error_code& ec) {
  std::string out;
  std::vector<char> buf(64 * 1024);
  for (;;) {
    const std::size_t n = co_await s.read_some(buf, ec);
    if (ec || n == 0) {
      co_return out;
    }
    out.append(buf.data(), n);
  }
}

// The server side of the tests: "svc:80" is echoed (read all, write back, end), "stall:1" is
// answered and never read, anything else is refused with 400.
asio::awaitable<void> serve(mux::Request request, std::unique_ptr<mux::Stream> stream,
                            std::vector<std::string>* seen) {
  seen->push_back(request.authority + " " + request.header("forwarded"));
  if (request.authority == "stall:1") {
    stream->respond(200);
    // Holds the stream without reading until it ends (the connection closing at the end).
    asio::steady_timer tick(stream->socket().get_executor());
    while (stream->last_error().empty()) {
      tick.expires_after(std::chrono::milliseconds(10));
      asio::error_code ec;
      co_await tick.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    co_return;
  }
  if (request.authority != "svc:80") {
    stream->respond(400);
    co_return;
  }
  stream->respond(200);
  asio::error_code ec;
  const std::string got = co_await read_all(*stream, ec);
  if (ec) {
    co_return;  // reset by the client: nothing to echo
  }
  co_await stream->write_all(got, ec);
  co_await stream->shutdown_write(ec);
  // Kept until both ends are done, as a session keeps its stream during the pump.
  std::string rest = co_await read_all(*stream, ec);
}

struct Pair {
  asio::io_context io;
  std::optional<base::TcpStream> client_side, server_side;
  std::shared_ptr<mux::Connection> client, server;
  std::vector<std::string> seen;

  explicit Pair(mux::Settings settings = {}) {
    settings.ping_interval = std::chrono::milliseconds(0);
    auto [a, b] = connected_pair(io);
    client_side.emplace(std::move(a));
    server_side.emplace(std::move(b));
    client = *mux::Connection::create(mux::Role::kClient, *client_side, settings);
    server = *mux::Connection::create(
        mux::Role::kServer, *server_side, settings,
        [this](mux::Request r, std::unique_ptr<mux::Stream> s) {
          asio::co_spawn(io, serve(std::move(r), std::move(s), &seen), rethrow);
        });
    asio::co_spawn(io, run(client), asio::detached);
    asio::co_spawn(io, run(server), asio::detached);
  }
  static asio::awaitable<void> run(std::shared_ptr<mux::Connection> c) {
    const std::string why = co_await c->run();
    (void)why;
  }
  void end() {
    client->close("test over");
    server->close("test over");
  }
};

// Opens a stream to `authority`, sends `payload`, half-closes and returns what came back.
asio::awaitable<std::string> echo(mux::Connection& c, std::string authority, std::string payload,
                                  std::string* error) {
  // A named vector: GCC 12 mishandles a braced temporary that lives across a co_await.
  std::vector<std::pair<std::string, std::string>> headers;
  headers.emplace_back("forwarded", "for=\"192.0.2.1:5\"");
  auto opened = co_await c.open(authority, std::move(headers));
  if (!opened) {
    *error = opened.error().message;
    co_return "";
  }
  auto& s = **opened;
  asio::error_code ec;
  co_await s.write_all(payload, ec);
  co_await s.shutdown_write(ec);
  std::string got = co_await read_all(s, ec);
  if (ec) {
    *error = ec.message();
  }
  co_return got;
}

}  // namespace

TEST_CASE("a CONNECT stream carries bytes both ways, half-closes and passes its headers") {
  Pair p;
  std::string got, error;
  const std::string payload(3 * 1024 * 1024 + 17, 'x');
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        got = co_await echo(*p.client, "svc:80", payload, &error);
        p.end();
      },
      rethrow);
  run_bounded(p.io);
  CHECK(error.empty());
  CHECK(got == payload);
  REQUIRE(p.seen.size() == 1);
  CHECK(p.seen[0] == "svc:80 for=\"192.0.2.1:5\"");
}

TEST_CASE("a refused CONNECT reports its status and the connection carries the next stream") {
  Pair p;
  std::string refused, got, error;
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        co_await echo(*p.client, "other:443", "x", &refused);
        got = co_await echo(*p.client, "svc:80", "after", &error);
        p.end();
      },
      rethrow);
  run_bounded(p.io);
  CHECK(refused == "CONNECT other:443 refused with status 400");
  CHECK(error.empty());
  CHECK(got == "after");
}

TEST_CASE("many concurrent streams stay separate") {
  Pair p;
  constexpr int kStreams = 50;
  std::vector<std::string> got(kStreams), errors(kStreams);
  int done = 0;
  for (int i = 0; i < kStreams; ++i) {
    asio::co_spawn(
        p.io,
        [&, i]() -> asio::awaitable<void> {
          const std::string payload(100000 + i, static_cast<char>('a' + i % 26));
          got[i] = co_await echo(*p.client, "svc:80", payload, &errors[i]);
          if (++done == kStreams) {
            p.end();
          }
        },
        rethrow);
  }
  run_bounded(p.io);
  for (int i = 0; i < kStreams; ++i) {
    CHECK(errors[i].empty());
    CHECK(got[i] == std::string(100000 + i, static_cast<char>('a' + i % 26)));
  }
}

TEST_CASE("a reset stream and a reader that never reads hold back no sibling") {
  mux::Settings small;
  small.stream_window = 64 * 1024;  // the stalled stream fills its window at once
  Pair p(small);
  std::string got, error, reset_error;
  bool stalled_writer_blocked = false;
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        // Stalled: the server answers and never reads; our writes queue up, then wait.
        auto stalled = co_await p.client->open("stall:1", no_headers());
        REQUIRE(stalled);
        asio::co_spawn(
            p.io,
            [&, s = stalled->get()]() -> asio::awaitable<void> {
              asio::error_code ec;
              const std::string big(4 * 1024 * 1024, 's');
              co_await s->write_all(big, ec);
              stalled_writer_blocked = !ec;  // only reached if the write completed
            },
            asio::detached);
        // Reset: opened, some data, then RST_STREAM.
        auto reset = co_await p.client->open("svc:80", no_headers());
        REQUIRE(reset);
        asio::error_code ec;
        const std::string some(100000, 'r');
        co_await (*reset)->write_all(some, ec);
        (*reset)->close();
        const std::string more = "more";
        co_await (*reset)->write_all(more, ec);
        reset_error = ec.message();
        // The sibling moves 8 MiB through the same connection.
        std::string bulk(8 * 1024 * 1024, 'b');
        got = co_await echo(*p.client, "svc:80", std::move(bulk), &error);
        p.end();
      },
      rethrow);
  run_bounded(p.io);
  CHECK(error.empty());
  CHECK(got.size() == 8 * 1024 * 1024);
  CHECK_FALSE(reset_error.empty());
  CHECK_FALSE(stalled_writer_blocked);  // its 4 MiB never fitted into a 64 KiB window
}

TEST_CASE("ending the carrying connection ends every stream with the reason") {
  Pair p;
  std::string error;
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        auto s = co_await p.client->open("stall:1", no_headers());
        REQUIRE(s);
        asio::co_spawn(p.io, [&]() -> asio::awaitable<void> {
          p.client->close("identity rotated away");
          co_return;
        }, rethrow);
        asio::error_code ec;
        std::vector<char> buf(16);
        co_await (*s)->read_some(buf, ec);
        error = ec ? (*s)->last_error() : "no error";
        p.server->close("test over");
      },
      rethrow);
  run_bounded(p.io);
  CHECK(error == "identity rotated away");
}

TEST_CASE("a retired connection takes no new streams and ends after its last") {
  Pair p;
  std::string got, error;
  bool accepted_after = true;
  asio::co_spawn(
      p.io,
      [&]() -> asio::awaitable<void> {
        auto s = co_await p.client->open("svc:80", no_headers());
        REQUIRE(s);
        p.server->retire();  // GOAWAY: the open stream finishes, no new ones
        asio::error_code ec;
        const std::string last = "last";
        co_await (*s)->write_all(last, ec);
        co_await (*s)->shutdown_write(ec);
        got = co_await read_all(**s, ec);
        accepted_after = p.client->accepts_streams();
        s->reset();
        p.client->retire();
      },
      rethrow);
  run_bounded(p.io);  // returns only if both connections ended on their own
  CHECK(got == "last");
  CHECK_FALSE(accepted_after);
  CHECK(p.client->ended());
  CHECK(p.server->ended());
}
