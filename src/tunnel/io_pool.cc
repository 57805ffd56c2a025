#include "spiffe_tunnel/tunnel/io_pool.h"

namespace spiffe_tunnel::tunnel {

IoPool::IoPool(std::size_t threads) {
  if (threads == 0) {
    threads = 1;
  }
  for (std::size_t i = 0; i < threads; ++i) {
    // Each context runs on exactly one thread: tell asio so it can skip internal locking.
    contexts_.push_back(std::make_unique<asio::io_context>(1));
    guards_.push_back(asio::make_work_guard(*contexts_.back()));
  }
}

IoPool::~IoPool() { stop(); }

void IoPool::start() {
  for (auto& ctx : contexts_) {
    threads_.emplace_back([c = ctx.get()] { c->run(); });
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
