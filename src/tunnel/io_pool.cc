#include "spiffe_tunnel/tunnel/io_pool.h"

#include <pthread.h>
#include <sched.h>

#include <string>

#include <asio/steady_timer.hpp>

namespace spiffe_tunnel::tunnel {

IoPool::IoPool(std::size_t threads, std::chrono::microseconds busy_poll)
    : busy_poll_(busy_poll) {
  if (threads == 0) {
    threads = 1;
  }
  for (std::size_t i = 0; i < threads; ++i) {
    // Each context runs on exactly one thread: tell asio so it can skip internal locking.
    contexts_.push_back(std::make_unique<asio::io_context>(1));
    guards_.push_back(asio::make_work_guard(*contexts_.back()));
    // Makes the context's reactor (epoll, eventfd, timerfd) now. Made lazily, it would come
    // with the first socket accepted onto this context, and when the process is out of
    // descriptors then, asio throws from inside the accept handler and the process aborts.
    asio::steady_timer reactor_now(*contexts_.back());
  }
}

IoPool::~IoPool() { stop(); }

void IoPool::start() {
  for (std::size_t i = 0; i < contexts_.size(); ++i) {
    threads_.emplace_back([c = contexts_[i].get(), window = busy_poll_, i] {
      // The name shows in top -H, /proc/PID/task/*/comm and IoProbe's log lines.
      pthread_setname_np(pthread_self(), ("spiffe-io-" + std::to_string(i)).c_str());
      if (window.count() > 0) {
        run_busy_polling(*c, window);
      } else {
        c->run();
      }
    });
  }
}

void IoPool::run_busy_polling(asio::io_context& ctx, std::chrono::microseconds window) {
  using Clock = std::chrono::steady_clock;
  auto last_work = Clock::now();
  while (!ctx.stopped()) {
    if (ctx.poll() > 0) {  // ran handlers: keep polling
      last_work = Clock::now();
      continue;
    }
    if (Clock::now() - last_work < window) {
      sched_yield();
      continue;
    }
    ctx.run_one();  // quiet for the whole window: sleep until the next event
    last_work = Clock::now();
  }
}

void IoPool::stop() {
  guards_.clear();
  for (auto& ctx : contexts_) {
    ctx->stop();
  }
  for (auto& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
  threads_.clear();
}

asio::io_context& IoPool::next() {
  return *contexts_[next_.fetch_add(1, std::memory_order_relaxed) % contexts_.size()];
}

}  // namespace spiffe_tunnel::tunnel
