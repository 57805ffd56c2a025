#pragma once
// A fixed set of io_contexts, one thread each, for the data path. Sessions are spread over them
// round-robin; a session stays on its io_context for its whole life, so its sockets are only ever
// touched by one thread. start() and stop() are called by the owner (app) only.
//
// With a busy-poll window, a thread that has just run handlers keeps polling (epoll_wait with a
// zero timeout, sched_yield() between polls so that other runnable processes on its CPU go
// first) for that long before it sleeps: the next packet is picked up without a wake-up,
// which on a VM (where waking an idle vCPU goes through the hypervisor) is most of a relay's
// round-trip time. An idle daemon still sleeps; a busy one trades CPU for latency.

#include <asio/io_context.hpp>
#include <asio/executor_work_guard.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

namespace spiffe_tunnel::tunnel {

class IoPool {
 public:
  explicit IoPool(std::size_t threads,
                  std::chrono::microseconds busy_poll = std::chrono::microseconds(0));
  ~IoPool();

  void start();
  // Stops all io_contexts and joins the threads. Safe to call twice.
  void stop();

  // The next io_context in round-robin order. Thread-safe.
  asio::io_context& next();
  asio::io_context& at(std::size_t i) { return *contexts_[i]; }
  std::size_t size() const { return contexts_.size(); }

 private:
  static void run_busy_polling(asio::io_context& ctx, std::chrono::microseconds window);

  std::vector<std::unique_ptr<asio::io_context>> contexts_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::vector<std::thread> threads_;
  std::atomic<std::size_t> next_{0};
  std::chrono::microseconds busy_poll_;
};

}  // namespace spiffe_tunnel::tunnel
