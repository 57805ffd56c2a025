#pragma once
// Proves that every data-path thread of an IoPool still runs handlers, for the systemd watchdog:
// a main loop that runs says nothing about a data thread stuck in a handler (a blocking call, a
// livelock), which would leave every session on that thread frozen while the daemon looks alive.
//
// Each check() posts a cheap probe to every io_context whose last probe has run; the probe only
// marks itself done, on its thread. A thread is stuck when a probe posted to it has waited longer
// than `max_age` (behind a blocking handler, or a queue that long). How often check() is called
// does not matter: a thread is judged only by a probe it has been given. check() logs once when a
// thread becomes stuck and once when it runs again, naming the thread (spiffe-io-N).
//
// Only the owner's thread (app's main loop) calls check(). The pool must outlive the probe;
// probes still queued when the pool stops are dropped with it.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace spiffe_tunnel::tunnel {

class IoPool;

class IoProbe {
 public:
  // `pool` is borrowed.
  IoProbe(IoPool& pool, std::chrono::milliseconds max_age);
  ~IoProbe();

  // Posts new probes and returns true when no thread has a probe waiting longer than max_age.
  bool check();
  // The indexes of the threads found stuck by the last check(), in order.
  const std::vector<std::size_t>& stuck() const { return stuck_; }

 private:
  struct Slot;

  IoPool& pool_;
  std::chrono::milliseconds max_age_;
  std::vector<std::shared_ptr<Slot>> slots_;  // shared with the probes in flight
  std::vector<std::size_t> stuck_;
};

}  // namespace spiffe_tunnel::tunnel
