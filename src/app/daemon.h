#pragma once
// Runs the daemon for one validated Config until SIGINT/SIGTERM: wires the identity source to the
// identity store, builds one Tunnel per configured tunnel, serves admin, and drains on shutdown.

#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::app {

// Returns the process exit code.
int run_daemon(const config::Config& config);

}  // namespace spiffe_tunnel::app
