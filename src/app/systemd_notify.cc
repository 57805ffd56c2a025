#include "systemd_notify.h"

#include <time.h>

#include <algorithm>
#include <cstdlib>

#ifdef SPIFFE_TUNNEL_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace spiffe_tunnel::app {

#ifdef SPIFFE_TUNNEL_HAVE_SYSTEMD
SystemdNotifier::SystemdNotifier() {
  enabled_ = std::getenv("NOTIFY_SOCKET") != nullptr;
  uint64_t usec = 0;
  if (enabled_ && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    interval_ = std::chrono::milliseconds(usec / 1000);
  }
}

void SystemdNotifier::ready(const std::string& s) {
  if (enabled_) {
    sd_notifyf(0, "READY=1\nSTATUS=%s", s.c_str());
  }
}

void SystemdNotifier::stopping() {
  if (enabled_) {
    sd_notify(0, "STOPPING=1");
  }
}

void SystemdNotifier::reloading() {
  if (enabled_) {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const unsigned long long usec =
        static_cast<unsigned long long>(ts.tv_sec) * 1'000'000ULL + ts.tv_nsec / 1000;
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
  }
}

void SystemdNotifier::status(const std::string& s) {
  if (enabled_) {
    sd_notifyf(0, "STATUS=%s", s.c_str());
  }
}

void SystemdNotifier::watchdog() {
  if (!enabled_ || interval_ >= std::chrono::hours(1)) {
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ping_ >= interval_ / 2) {
    sd_notify(0, "WATCHDOG=1");
    last_ping_ = now;
  }
}
#else
SystemdNotifier::SystemdNotifier() = default;
void SystemdNotifier::ready(const std::string&) {}
void SystemdNotifier::stopping() {}
void SystemdNotifier::reloading() {}
void SystemdNotifier::status(const std::string&) {}
void SystemdNotifier::watchdog() {}
#endif

std::chrono::milliseconds data_path_probe_limit(const SystemdNotifier& notifier) {
  return std::min(notifier.watchdog_interval() / 2,
                  std::chrono::milliseconds(std::chrono::seconds(10)));
}

}  // namespace spiffe_tunnel::app
