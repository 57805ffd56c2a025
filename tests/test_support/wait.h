#pragma once
// Waiting on a condition in tests, instead of sleeping for a fixed time: poll a predicate until it
// holds or a deadline passes. Shared by every module's tests (tests/ is on their include path).

#include <chrono>
#include <thread>

namespace spiffe_tunnel::testing {

// Long enough for a loaded sanitizer build; a passing test never waits this long.
constexpr std::chrono::milliseconds kWaitTimeout = std::chrono::seconds(5);

// Calls `done` until it returns true (then returns true) or `timeout` has passed (then returns
// false), sleeping `poll` between calls. Use as REQUIRE(wait_until([&] { return ...; })).
template <typename Predicate>
bool wait_until(Predicate&& done, std::chrono::milliseconds timeout = kWaitTimeout,
                std::chrono::milliseconds poll = std::chrono::milliseconds(2)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(poll);
  }
  return true;
}

}  // namespace spiffe_tunnel::testing
