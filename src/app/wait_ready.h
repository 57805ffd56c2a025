#pragma once
// `spiffe-tunnel wait-ready`: starts the identity source, waits until it has delivered the SVID
// asked for and the bundles of the trust domains named, prints one line saying what it got, and
// exits. For init containers, systemd's ExecStartPre= and scripts. Runs on the main thread.

#include "spiffe_tunnel/config/wait_ready.h"

namespace spiffe_tunnel::app {

// Exit codes (docs/operations.md, "Waiting for an identity").
inline constexpr int kWaitReadyOk = 0;
inline constexpr int kWaitReadyBadUsage = 1;  // bad flags or configuration; nothing was waited for
inline constexpr int kWaitReadyTimeout = 2;   // the reason is on stderr
// Ended by SIGINT or SIGTERM before ready: 128 + the signal number, as a shell reports it.

int run_wait_ready(const config::WaitReadyConfig& config);

}  // namespace spiffe_tunnel::app
