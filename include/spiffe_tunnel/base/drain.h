#pragma once
// Drain: the owner's side of a graceful shutdown. Each participant (a session) holds a DrainToken
// for its lifetime; the owner (a tunnel, the daemon) begins draining, which stops new tokens from
// being handed out, then waits until every token is released or a deadline passes, and can ask the
// remaining holders to end at once (a token may carry an abort function for that).
//
// Any thread may call every method: sessions release their tokens on IoPool threads while the
// main thread waits. Tokens may outlive the Drain that issued them (they share its state);
// releasing one after the Drain is gone is harmless.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

namespace spiffe_tunnel::base {

namespace drain_detail {
struct State;
}

// One participant's hold on a Drain. Move-only; released when destroyed or by release().
class DrainToken {
 public:
  DrainToken() = default;
  DrainToken(DrainToken&& other) noexcept;
  DrainToken& operator=(DrainToken&& other) noexcept;
  DrainToken(const DrainToken&) = delete;
  DrainToken& operator=(const DrainToken&) = delete;
  ~DrainToken();

  // Gives the hold back. Safe to call twice; the second call does nothing.
  void release();
  // True until released (a default-constructed token holds nothing).
  bool held() const { return state_ != nullptr; }

 private:
  friend class Drain;
  DrainToken(std::shared_ptr<drain_detail::State> state, uint64_t id);

  std::shared_ptr<drain_detail::State> state_;
  uint64_t id_ = 0;
};

class Drain {
 public:
  Drain();
  Drain(const Drain&) = delete;
  Drain& operator=(const Drain&) = delete;
  ~Drain();

  // A token for one new participant, or nullopt once draining has begun (refuse the work then).
  // `abort` is what abort_all() calls to make this participant end early: it runs on the thread
  // that calls abort_all(), outside any lock, so it must be thread-safe and quick (post, do not
  // block). It may be empty: such a token costs a count, no entry (a holder that keeps its own
  // registry aborts through that).
  std::optional<DrainToken> acquire(std::function<void()> abort = {});

  // Stops handing out tokens. Safe to call twice.
  void begin();
  bool draining() const;
  // Tokens not yet released.
  std::size_t held() const;

  // Calls the abort function of every token still held. Tokens stay held until their holders
  // release them; wait_released() waits for that. Safe to call twice.
  void abort_all();

  // Blocks until no token is held or `deadline` passes. True when none is held.
  bool wait_released(std::chrono::steady_clock::time_point deadline) const;
  // Calls `done` once when no token is held: at once (on this thread) if none is now, otherwise
  // on the thread that releases the last one. Replaces an earlier callback not yet called.
  void on_released(std::function<void()> done);

 private:
  std::shared_ptr<drain_detail::State> state_;
};

}  // namespace spiffe_tunnel::base
