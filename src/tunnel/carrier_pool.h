#pragma once
// CarrierPool: the carrying connections (HTTP/2 over mTLS) of one multiplexing client tunnel.
// Each data-path thread has its own slot, so a stream always runs on the thread of the
// connection that carries it (Envoy's per-worker connection pools work the same way): a slot holds
// at most `per_thread` connections and opens one when every connection it has is full.
// Connections are established by carrier sessions (Session::run_carrier) that the tunnel starts
// through `Starter`; they report back with established()/failed()/ended() on their thread.
// Slots are touched only from their own thread; the slot map is guarded by mutex_.

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/mux/connection.h"

namespace spiffe_tunnel::tunnel {

class CarrierPool {
 public:
  // Starts one carrier session on `ex`; false when the tunnel takes no more (stopped).
  using Starter = std::function<bool(const asio::any_io_executor& ex)>;

  CarrierPool(std::size_t per_thread, Starter start);

  // On the thread of `ex`: a connection of that thread that takes one more stream, opening one
  // when needed; an error when opening failed or nothing was free within `timeout`.
  asio::awaitable<base::Result<std::shared_ptr<mux::Connection>>> acquire(
      asio::any_io_executor ex, std::chrono::milliseconds timeout);

  // From a carrier session, on its thread.
  void established(const asio::any_io_executor& ex, std::shared_ptr<mux::Connection> c);
  void failed(const asio::any_io_executor& ex, const std::string& why);
  void ended(const asio::any_io_executor& ex, const mux::Connection* c);

  // No carriers are started any more (the tunnel is going away). Any thread.
  void detach();

 private:
  struct Slot {
    std::vector<std::shared_ptr<mux::Connection>> live;
    std::size_t opening = 0;
    uint64_t failures = 0;
    std::string last_failure;
    std::vector<asio::steady_timer*> waiters;  // acquire() calls waiting for a change
  };
  Slot& slot(const asio::any_io_executor& ex);
  static void wake(Slot& s);
  bool start(const asio::any_io_executor& ex);

  const std::size_t per_thread_;
  std::mutex mutex_;
  Starter start_;                                                     // guarded by mutex_
  std::map<const void*, std::unique_ptr<Slot>> slots_;                // guarded by mutex_
};

}  // namespace spiffe_tunnel::tunnel
