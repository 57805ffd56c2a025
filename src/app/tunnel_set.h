#pragma once
// TunnelSet: the tunnels the daemon runs, by name, and the previous versions still draining.
// build() and start() bring up the configured tunnels; apply() carries out a reload plan;
// reap() (called on every tick of the main loop) retires drained versions; drain() ends
// everything on shutdown. Only the main thread changes the set; the admin thread reads it through
// for_each(), under the set's lock.

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "reload_plan.h"
#include "socket_activation.h"
#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/config/config.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tunnel/io_pool.h"
#include "spiffe_tunnel/tunnel/tunnel.h"

namespace spiffe_tunnel::app {

class TunnelSet {
 public:
  // `pool`, `metrics`, `store` and `activated` (the sockets systemd passed, for systemd:NAME
  // listeners) must outlive the set.
  TunnelSet(tunnel::IoPool& pool, base::MetricsRegistry& metrics,
            const identity::IdentityStore& store, ActivatedSockets& activated);

  // Builds every tunnel and binds its listener; the first failure is returned (and nothing of
  // this call is kept).
  base::Status build(const std::vector<config::TunnelConfig>& tunnels);
  // Starts accepting on every tunnel. The pool must run.
  void start();

  // Carries out `plan` towards `next` (the tunnels of the new configuration). First every new
  // listener is bound (added tunnels, and replaced ones that move): if one fails, nothing
  // changes and the error says which. Then, in one step: unchanged tunnels stay, changed
  // policies apply to new and open sessions, replaced tunnels hand their listener over (or close
  // it) and drain until `drain_timeout` from now, removed tunnels drain, added ones start.
  base::Status apply(const ReloadPlan& plan, const std::vector<config::TunnelConfig>& next,
                     std::chrono::milliseconds drain_timeout);

  // Destroys retired versions whose sessions have ended, and closes the sessions of those past
  // their drain deadline.
  void reap();

  // Stops every listener, waits for sessions until `deadline`, closes the rest. Shutdown only.
  void drain(std::chrono::steady_clock::time_point deadline);
  // Destroys every tunnel. Only once the pool has stopped.
  void clear();

  // Asks the open sessions of every tunnel, running or draining, to check themselves against the
  // identity store's newest snapshot (tunnel::Tunnel::recheck_identity). Any thread.
  void recheck_identity();

  // Calls `fn` for each running tunnel, in configuration order, under the set's lock.
  void for_each(const std::function<void(const tunnel::Tunnel&)>& fn) const;
  // Calls `fn` for each retired version still draining, under the set's lock.
  void for_each_draining(const std::function<void(const tunnel::Tunnel&)>& fn) const;
  std::size_t size() const;

 private:
  struct Running {
    config::TunnelConfig config;
    std::unique_ptr<tunnel::Tunnel> tunnel;
  };
  struct Retired {
    std::unique_ptr<tunnel::Tunnel> tunnel;
    std::chrono::steady_clock::time_point deadline;
    bool closed = false;  // its sessions were told to close at the deadline
  };

  // A tunnel for `config`; with `listener` (released by its previous version) it takes that over
  // instead of opening its listen address.
  base::Result<std::unique_ptr<tunnel::Tunnel>> make(
      const config::TunnelConfig& config,
      std::shared_ptr<tunnel::Listener> listener = nullptr) const;
  // The new version of a running tunnel (or the tunnel itself, for unchanged and policy changes).
  std::unique_ptr<tunnel::Tunnel> carry_over(const TunnelChange& change, Running& old,
                                             const config::TunnelConfig& next,
                                             std::unique_ptr<tunnel::Tunnel> prepared,
                                             std::chrono::steady_clock::time_point deadline);
  void retire(std::unique_ptr<tunnel::Tunnel> tunnel,
              std::chrono::steady_clock::time_point deadline);

  tunnel::IoPool& pool_;
  base::MetricsRegistry& metrics_;
  const identity::IdentityStore& store_;
  ActivatedSockets& activated_;

  mutable std::mutex mutex_;
  std::vector<Running> running_;  // guarded by mutex_ (written by the main thread only)
  std::vector<Retired> retired_;  // guarded by mutex_
};

}  // namespace spiffe_tunnel::app
