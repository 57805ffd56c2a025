#pragma once
// Runs the daemon for one validated Config until SIGINT/SIGTERM: wires the identity source to the
// identity store, builds one Tunnel per configured tunnel, serves admin, and drains on shutdown.

#include <functional>

#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::app {

struct DaemonHooks {
  // Called once every tunnel listens, with the bound ports (for the demo and tests).
  std::function<void(const std::vector<uint16_t>& ports)> on_listening;
  // When set, the daemon stops as soon as this returns true (polled), instead of on a signal.
  std::function<bool()> should_stop;
};

// Returns the process exit code.
int run_daemon(const config::Config& config, const DaemonHooks& hooks = {});

}  // namespace spiffe_tunnel::app
