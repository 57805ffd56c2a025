#pragma once
// Wall-clock time, injected so that expiry, rotation and backoff logic can be tested without
// sleeping. SystemClock is the real one; ManualClock is advanced by tests. Both are thread-safe.

#include <atomic>
#include <chrono>

namespace spiffe_tunnel::base {

class Clock {
 public:
  using time_point = std::chrono::system_clock::time_point;
  virtual ~Clock() = default;
  virtual time_point now() const = 0;
};

class SystemClock final : public Clock {
 public:
  time_point now() const override { return std::chrono::system_clock::now(); }
  // A process-wide instance for production wiring.
  static const SystemClock& instance() {
    static const SystemClock clock;
    return clock;
  }
};

class ManualClock final : public Clock {
 public:
  explicit ManualClock(time_point start) : now_(start.time_since_epoch().count()) {}
  time_point now() const override { return time_point(time_point::duration(now_.load())); }
  void advance(std::chrono::system_clock::duration d) { now_ += d.count(); }
  void set(time_point t) { now_ = t.time_since_epoch().count(); }

 private:
  std::atomic<time_point::rep> now_;
};

}  // namespace spiffe_tunnel::base
