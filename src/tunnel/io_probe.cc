#include "spiffe_tunnel/tunnel/io_probe.h"

#include <atomic>
#include <cstdint>

#include <asio/post.hpp>
#include <spdlog/spdlog.h>

#include "spiffe_tunnel/tunnel/io_pool.h"

namespace spiffe_tunnel::tunnel {
namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

}  // namespace

// One thread's probe state. The probe (on the data thread) clears `pending`; check() (on the
// main thread) sets it and reads it. Shared with the probe in flight, so a probe that runs after
// the IoProbe is gone touches nothing freed.
struct IoProbe::Slot {
  std::atomic<bool> pending{false};
  int64_t posted_ns = 0;        // main thread only: when the pending probe was posted
  bool reported_stuck = false;  // main thread only
};

IoProbe::IoProbe(IoPool& pool, std::chrono::milliseconds max_age)
    : pool_(pool), max_age_(max_age) {
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    slots_.push_back(std::make_shared<Slot>());
  }
}

IoProbe::~IoProbe() = default;

bool IoProbe::check() {
  const int64_t now = now_ns();
  const int64_t max_age_ns = std::chrono::nanoseconds(max_age_).count();
  stuck_.clear();
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = *slots_[i];
    if (slot.pending.load(std::memory_order_acquire)) {
      // The last probe has not run yet: stuck once it has waited longer than max_age.
      const int64_t waited_ns = now - slot.posted_ns;
      if (waited_ns > max_age_ns) {
        stuck_.push_back(i);
        if (!slot.reported_stuck) {
          spdlog::error(
              "data-path thread spiffe-io-{} is stuck: a probe posted to it {:.1f}s ago has not "
              "run (limit {}ms); its sessions are frozen and the systemd watchdog is no longer "
              "pinged",
              i, static_cast<double>(waited_ns) / 1e9, max_age_.count());
          slot.reported_stuck = true;
        }
      }
      continue;
    }
    // The last probe ran: the thread is alive. Post the next one.
    if (slot.reported_stuck) {
      spdlog::warn("data-path thread spiffe-io-{} runs again", i);
      slot.reported_stuck = false;
    }
    slot.pending.store(true, std::memory_order_release);
    slot.posted_ns = now;
    asio::post(pool_.at(i),
               [s = slots_[i]] { s->pending.store(false, std::memory_order_release); });
  }
  return stuck_.empty();
}

}  // namespace spiffe_tunnel::tunnel
