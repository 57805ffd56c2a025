#include "tunnel/carrier_pool.h"

#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>

namespace spiffe_tunnel::tunnel {
namespace {

// How often a waiter looks again when all connections are full (streams end without a signal).
constexpr std::chrono::milliseconds kFullRetry{20};

}  // namespace

CarrierPool::CarrierPool(std::size_t per_thread, Starter start)
    : per_thread_(std::max<std::size_t>(per_thread, 1)), start_(std::move(start)) {}

CarrierPool::Slot& CarrierPool::slot(const asio::any_io_executor& ex) {
  std::lock_guard lock(mutex_);
  auto& s = slots_[&asio::query(ex, asio::execution::context)];
  if (!s) {
    s = std::make_unique<Slot>();
  }
  return *s;
}

bool CarrierPool::start(const asio::any_io_executor& ex) {
  Starter starter;
  {
    std::lock_guard lock(mutex_);
    starter = start_;
  }
  return starter && starter(ex);
}

void CarrierPool::detach() {
  std::lock_guard lock(mutex_);
  start_ = nullptr;
}

void CarrierPool::wake(Slot& s) {
  for (auto* t : s.waiters) {
    t->cancel();
  }
}

asio::awaitable<base::Result<std::shared_ptr<mux::Connection>>> CarrierPool::acquire(
    asio::any_io_executor ex, std::chrono::milliseconds timeout) {
  Slot& s = slot(ex);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  asio::steady_timer timer(ex);
  for (;;) {
    std::erase_if(s.live, [](const auto& c) { return c->ended(); });
    std::shared_ptr<mux::Connection> best;
    for (const auto& c : s.live) {
      if (c->accepts_streams() && (!best || c->active_streams() < best->active_streams())) {
        best = c;
      }
    }
    if (best) {
      co_return best;
    }
    if (s.live.size() + s.opening < per_thread_) {
      if (!start(ex)) {
        co_return base::make_error("the tunnel is stopping");
      }
      ++s.opening;
    }
    const uint64_t failures = s.failures;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      co_return base::make_error(
          s.opening > 0 ? "no carrying connection established in time"
                        : "every carrying connection is at its stream limit");
    }
    timer.expires_at(s.opening > 0 ? deadline : std::min(deadline, now + kFullRetry));
    s.waiters.push_back(&timer);
    asio::error_code ignored;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    std::erase(s.waiters, &timer);
    if (s.failures != failures) {
      co_return base::make_error("cannot open a carrying connection: " + s.last_failure);
    }
  }
}

void CarrierPool::established(const asio::any_io_executor& ex,
                              std::shared_ptr<mux::Connection> c) {
  Slot& s = slot(ex);
  s.opening -= s.opening > 0 ? 1 : 0;
  s.live.push_back(std::move(c));
  wake(s);
}

void CarrierPool::failed(const asio::any_io_executor& ex, const std::string& why) {
  Slot& s = slot(ex);
  s.opening -= s.opening > 0 ? 1 : 0;
  ++s.failures;
  s.last_failure = why;
  wake(s);
}

void CarrierPool::ended(const asio::any_io_executor& ex, const mux::Connection* c) {
  Slot& s = slot(ex);
  std::erase_if(s.live, [c](const auto& l) { return l.get() == c; });
  wake(s);
}

}  // namespace spiffe_tunnel::tunnel
