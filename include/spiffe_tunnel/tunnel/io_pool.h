#pragma once
// A fixed set of io_contexts, one thread each, for the data path. Sessions are spread over them
// round-robin; a session stays on its io_context for its whole life, so its sockets are only ever
// touched by one thread. start() and stop() are called by the owner (app) only.

#include <asio/io_context.hpp>
#include <asio/executor_work_guard.hpp>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

namespace spiffe_tunnel::tunnel {

class IoPool {
 public:
  explicit IoPool(std::size_t threads);
  ~IoPool();

  void start();
  // Stops all io_contexts and joins the threads. Safe to call twice.
  void stop();

  // The next io_context in round-robin order. Thread-safe.
  asio::io_context& next();
  asio::io_context& at(std::size_t i) { return *contexts_[i]; }
  std::size_t size() const { return contexts_.size(); }

 private:
  std::vector<std::unique_ptr<asio::io_context>> contexts_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::vector<std::thread> threads_;
  std::atomic<std::size_t> next_{0};
};

}  // namespace spiffe_tunnel::tunnel
