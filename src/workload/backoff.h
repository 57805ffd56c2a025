#pragma once
// Backoff: the delays between Workload API reconnection attempts -- exponential from `initial`,
// doubling up to `max`, each with ±20% jitter so that many workloads behind one restarted agent
// do not reconnect in lockstep. Owned by one thread; not thread-safe.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace spiffe_tunnel::workload {

class Backoff {
 public:
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max,
          uint64_t seed = std::random_device{}())
      : initial_(std::max(initial, std::chrono::milliseconds(1))),
        max_(std::max(max, initial_)),
        current_(initial_),
        rng_(seed) {}

  // The next delay (jittered), then doubles the base up to the cap.
  std::chrono::milliseconds next() {
    const auto d = jitter(current_);
    current_ = std::min(current_ * 2, max_);
    return d;
  }
  // next(), but no later than `left` (the time until the identities held expire) and, once they
  // have expired, about `initial`: an agent that comes back is reached before the last SVID
  // expires, or within about one initial delay after, not up to `max` later.
  std::chrono::milliseconds next_within(std::chrono::milliseconds left) {
    const auto d = next();
    return std::min(d, std::max(left, jitter(initial_)));
  }
  // A delay at the cap (jittered), for errors that retrying soon will not fix.
  std::chrono::milliseconds at_cap() { return jitter(max_); }
  // Starts over from `initial` (after a good message).
  void reset() { current_ = initial_; }

 private:
  std::chrono::milliseconds jitter(std::chrono::milliseconds base) {
    std::uniform_real_distribution<double> factor(0.8, 1.2);
    const double ms = static_cast<double>(base.count()) * factor(rng_);
    return std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(ms)));
  }

  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  std::chrono::milliseconds current_;
  std::mt19937_64 rng_;
};

}  // namespace spiffe_tunnel::workload
