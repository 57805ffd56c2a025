#pragma once
// The process-wide log level, from the configuration's value. Used at start-up and on reload.

#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::app {

void set_log_level(config::LogLevel level);

}  // namespace spiffe_tunnel::app
