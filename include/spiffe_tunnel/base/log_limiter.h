#pragma once

// Rate limit for repetitive log lines (rejections, accept failures): at most `per_second` lines
// of each key go through in any one-second window; the rest are counted, and the next line that
// goes through carries how many were left out, so that the log says "suppressed K similar lines"
// instead of losing them silently. Thread-safe.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

namespace spiffe_tunnel::base {

class LogRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LogRateLimiter(std::size_t per_second = 10) : per_second_(per_second) {}

  struct Decision {
    bool log = false;
    std::uint64_t suppressed_before = 0;  // left out since the previous line of this key went out
  };
  Decision admit(std::string_view key, Clock::time_point now = Clock::now());

 private:
  struct State {
    Clock::time_point window_start{};
    std::size_t in_window = 0;
    std::uint64_t suppressed = 0;
  };
  const std::size_t per_second_;
  std::mutex mutex_;
  std::map<std::string, State, std::less<>> keys_;  // guarded by mutex_
};

// Back-off after a failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...): the listener stays
// readable, so accepting again at once would spin on the same error. 10 ms, doubling to 1 s;
// reset by the next successful accept. One per accept loop, used on that loop's thread.
class AcceptBackoff {
 public:
  static constexpr std::chrono::milliseconds kFirst{10};
  static constexpr std::chrono::milliseconds kMax{1000};
  // The pause before the next attempt.
  std::chrono::milliseconds next() {
    const auto d = delay_;
    delay_ = delay_ * 2 > kMax ? kMax : delay_ * 2;
    ++failures_;
    return d;
  }
  // After a successful accept; returns how many accepts had failed in a row.
  std::uint64_t reset() {
    delay_ = kFirst;
    const auto n = failures_;
    failures_ = 0;
    return n;
  }

 private:
  std::chrono::milliseconds delay_ = kFirst;
  std::uint64_t failures_ = 0;
};

}  // namespace spiffe_tunnel::base
