#pragma once
// Runs the daemon for one validated Config until SIGINT/SIGTERM: wires the identity source to the
// identity store, builds one Tunnel per configured tunnel, serves admin, reloads on SIGHUP, and
// drains on shutdown.

#include <functional>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::app {

// Reads the configuration again for a reload (the file, with the command line's overrides),
// validated; null when the configuration did not come from a file.
using ConfigLoader = std::function<base::Result<config::Config>()>;

// Returns the process exit code.
int run_daemon(const config::Config& config, ConfigLoader loader = nullptr);

}  // namespace spiffe_tunnel::app
