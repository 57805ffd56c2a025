#include "spiffe_tunnel/tunnel/io_pool.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <asio/local/connect_pair.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/post.hpp>

#include <array>
#include <chrono>
#include <future>
#include <thread>

#include <catch2/catch.hpp>

using namespace std::chrono_literals;
using spiffe_tunnel::tunnel::IoPool;

namespace {

// The CPU clock of the pool's (single) thread, read from inside it.
clockid_t pool_thread_clock(IoPool& pool) {
  std::promise<clockid_t> id;
  asio::post(pool.at(0), [&id] {
    clockid_t c{};
    pthread_getcpuclockid(pthread_self(), &c);
    id.set_value(c);
  });
  return id.get_future().get();
}

std::chrono::nanoseconds cpu_time(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// CPU the pool thread uses during `wall` of real time.
std::chrono::milliseconds cpu_during(clockid_t clock, std::chrono::milliseconds wall) {
  const auto before = cpu_time(clock);
  // The sleep is the measurement: the pool thread's CPU over this much wall time.
  std::this_thread::sleep_for(wall);
  return std::chrono::duration_cast<std::chrono::milliseconds>(cpu_time(clock) - before);
}

}  // namespace

TEST_CASE("a busy-polling pool keeps its thread running for the window, then sleeps") {
  IoPool pool(1, 400ms);
  pool.start();
  const clockid_t clock = pool_thread_clock(pool);  // the last event: the window starts now
  // Inside the window the thread polls instead of sleeping: it uses CPU with nothing to do.
  const auto spinning = cpu_during(clock, 200ms);
  // Letting the 400 ms window run out is the behaviour under test: after it, epoll_wait sleeps.
  std::this_thread::sleep_for(400ms);
  const auto idle = cpu_during(clock, 300ms);
  pool.stop();
  INFO("CPU in 200 ms inside the window: " << spinning.count() << " ms; in 300 ms after it: "
                                           << idle.count() << " ms");
  CHECK(spinning >= 20ms);  // a loaded CI machine still gives a spinning thread that much
  CHECK(idle <= 10ms);
}

TEST_CASE("a pool without busy polling sleeps between events") {
  IoPool pool(1);
  pool.start();
  const clockid_t clock = pool_thread_clock(pool);
  const auto idle = cpu_during(clock, 300ms);
  pool.stop();
  INFO("CPU in 300 ms: " << idle.count() << " ms");
  CHECK(idle <= 10ms);
}

TEST_CASE("a busy-polling pool handles socket events inside and after its window") {
  IoPool pool(1, 20ms);
  asio::local::stream_protocol::socket ours(pool.at(0));
  asio::local::stream_protocol::socket theirs(pool.at(0));
  asio::local::connect_pair(ours, theirs);
  pool.start();
  // Messages 0-9 follow each other closely (picked up while polling); 10-14 come after gaps
  // longer than the window (the thread is asleep in epoll_wait and must be woken).
  for (int i = 0; i < 15; ++i) {
    std::array<char, 1> byte{};
    std::promise<std::size_t> got;
    asio::post(pool.at(0), [&] {
      ours.async_read_some(asio::buffer(byte),
                           [&](const asio::error_code& ec, std::size_t n) {
                             got.set_value(ec ? 0 : n);
                           });
    });
    // The gaps are the behaviour under test: shorter than the window, then longer.
    std::this_thread::sleep_for(i < 10 ? 1ms : 60ms);
    const char c = static_cast<char>('a' + i);
    REQUIRE(::write(theirs.native_handle(), &c, 1) == 1);
    auto f = got.get_future();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    CHECK(f.get() == 1);
    CHECK(byte[0] == c);
  }
  pool.stop();
}

TEST_CASE("stop() ends a busy-polling pool promptly") {
  IoPool pool(2, 10ms);
  pool.start();
  // One event on each thread, handled: both are polling inside their window now.
  for (std::size_t i = 0; i < pool.size(); ++i) {
    std::promise<void> ran;
    asio::post(pool.at(i), [&ran] { ran.set_value(); });
    REQUIRE(ran.get_future().wait_for(5s) == std::future_status::ready);
  }
  const auto t0 = std::chrono::steady_clock::now();
  pool.stop();
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
}
