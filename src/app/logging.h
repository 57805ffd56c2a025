#pragma once
// Where the process's log lines go and in which form: text or JSON lines on stderr, or the
// systemd journal's native protocol when stderr is connected to journald (JOURNAL_STREAM), so
// that each line keeps its priority and its fields (TUNNEL=, PEER_ID=, ...). Called by the main
// thread before other threads log.

#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::app {

// Replaces spdlog's default logger with one writing `format`; keeps the current level.
void configure_logging(config::LogFormat format);
void set_log_level(config::LogLevel level);

// True when stderr is the stream systemd connected to the journal: JOURNAL_STREAM holds
// "<device>:<inode>" of it (systemd.exec(5), "$JOURNAL_STREAM").
bool stderr_is_journal();

}  // namespace spiffe_tunnel::app
