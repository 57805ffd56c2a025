#include "logging.h"

#include <spdlog/spdlog.h>

namespace spiffe_tunnel::app {

void set_log_level(config::LogLevel level) {
  using L = config::LogLevel;
  switch (level) {
    case L::kTrace:
      return spdlog::set_level(spdlog::level::trace);
    case L::kDebug:
      return spdlog::set_level(spdlog::level::debug);
    case L::kInfo:
      return spdlog::set_level(spdlog::level::info);
    case L::kWarn:
      return spdlog::set_level(spdlog::level::warn);
    case L::kError:
      return spdlog::set_level(spdlog::level::err);
    case L::kCritical:
      return spdlog::set_level(spdlog::level::critical);
    case L::kOff:
      return spdlog::set_level(spdlog::level::off);
  }
}

}  // namespace spiffe_tunnel::app
