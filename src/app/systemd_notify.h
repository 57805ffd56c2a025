#pragma once
// systemd service notification (Type=notify) and watchdog pings. Without systemd (no
// NOTIFY_SOCKET) every call is a no-op. Only the main thread uses it.

#include <chrono>
#include <string>

namespace spiffe_tunnel::app {

class SystemdNotifier {
 public:
  SystemdNotifier();
  void ready(const std::string& status);
  void stopping();
  // A reload starts (RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload expects); ready()
  // ends it.
  void reloading();
  void status(const std::string& status);
  // Pings the watchdog if WatchdogSec= is set and half the interval has passed since the last ping.
  void watchdog();
  // The configured watchdog interval, or a large value when there is none.
  std::chrono::milliseconds watchdog_interval() const { return interval_; }

 private:
  std::chrono::milliseconds interval_{std::chrono::hours(1)};
  bool enabled_ = false;
  std::chrono::steady_clock::time_point last_ping_{};
};

// How long a data-path thread may go without running a probe before the watchdog pings stop:
// half the watchdog interval, at most 10s (also the limit for the "stuck" log line without a
// watchdog). A stuck thread thus gets the daemon restarted within about one interval.
std::chrono::milliseconds data_path_probe_limit(const SystemdNotifier& notifier);

}  // namespace spiffe_tunnel::app
