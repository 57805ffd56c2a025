#include "spiffe_tunnel/base/log_limiter.h"

namespace spiffe_tunnel::base {

LogRateLimiter::Decision LogRateLimiter::admit(std::string_view key, Clock::time_point now) {
  std::lock_guard lock(mutex_);
  auto it = keys_.find(key);
  if (it == keys_.end()) {
    it = keys_.emplace(std::string(key), State{now, 0, 0}).first;
  }
  State& s = it->second;
  if (now - s.window_start >= std::chrono::seconds(1)) {
    s.window_start = now;
    s.in_window = 0;
  }
  if (s.in_window >= per_second_) {
    ++s.suppressed;
    return {false, 0};
  }
  ++s.in_window;
  const std::uint64_t before = s.suppressed;
  s.suppressed = 0;
  return {true, before};
}

}  // namespace spiffe_tunnel::base
