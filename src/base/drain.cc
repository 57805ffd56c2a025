#include "spiffe_tunnel/base/drain.h"

#include <condition_variable>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace spiffe_tunnel::base {
namespace drain_detail {

struct State {
  mutable std::mutex mutex;
  std::condition_variable released;  // notified when the last token goes
  // guarded by mutex
  bool draining = false;
  uint64_t next_id = 1;
  std::size_t held = 0;  // tokens not yet released
  // Token id → abort function, for the tokens acquired with one (the others cost no entry).
  std::unordered_map<uint64_t, std::function<void()>> aborts;
  std::function<void()> on_released;

  // Called once per token (a released token gives up its state).
  void release(uint64_t id) {
    std::function<void()> done;
    {
      std::lock_guard lock(mutex);
      aborts.erase(id);
      if (--held != 0) {
        return;
      }
      done = std::move(on_released);
      on_released = nullptr;
      released.notify_all();
    }
    // Outside the lock: the callback may look at the drain again.
    if (done) {
      done();
    }
  }
};

}  // namespace drain_detail

DrainToken::DrainToken(std::shared_ptr<drain_detail::State> state, uint64_t id)
    : state_(std::move(state)), id_(id) {}

DrainToken::DrainToken(DrainToken&& other) noexcept
    : state_(std::move(other.state_)), id_(other.id_) {}

DrainToken& DrainToken::operator=(DrainToken&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    id_ = other.id_;
  }
  return *this;
}

DrainToken::~DrainToken() { release(); }

void DrainToken::release() {
  if (auto state = std::move(state_)) {
    state->release(id_);
  }
}

Drain::Drain() : state_(std::make_shared<drain_detail::State>()) {}

Drain::~Drain() = default;

std::optional<DrainToken> Drain::acquire(std::function<void()> abort) {
  std::lock_guard lock(state_->mutex);
  if (state_->draining) {
    return std::nullopt;
  }
  const uint64_t id = state_->next_id++;
  ++state_->held;
  if (abort) {
    state_->aborts.emplace(id, std::move(abort));
  }
  return DrainToken(state_, id);
}

void Drain::begin() {
  std::lock_guard lock(state_->mutex);
  state_->draining = true;
}

bool Drain::draining() const {
  std::lock_guard lock(state_->mutex);
  return state_->draining;
}

std::size_t Drain::held() const {
  std::lock_guard lock(state_->mutex);
  return state_->held;
}

void Drain::abort_all() {
  std::vector<std::function<void()>> aborts;
  {
    std::lock_guard lock(state_->mutex);
    for (const auto& [id, abort] : state_->aborts) {
      aborts.push_back(abort);
    }
  }
  // Outside the lock: an abort function may drop the last reference to its holder, whose token
  // then releases (and takes the lock) on this thread.
  for (auto& abort : aborts) {
    abort();
  }
}

bool Drain::wait_released(std::chrono::steady_clock::time_point deadline) const {
  std::unique_lock lock(state_->mutex);
  return state_->released.wait_until(lock, deadline, [&] { return state_->held == 0; });
}

void Drain::on_released(std::function<void()> done) {
  {
    std::lock_guard lock(state_->mutex);
    if (state_->held != 0) {
      state_->on_released = std::move(done);
      return;
    }
  }
  done();
}

}  // namespace spiffe_tunnel::base
