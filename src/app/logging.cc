#include "logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <span>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#ifdef SPIFFE_TUNNEL_HAVE_SYSTEMD
#include <systemd/sd-journal.h>
#endif

#include "spiffe_tunnel/base/log.h"

namespace spiffe_tunnel::app {
namespace {

constexpr char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%eZ %^%l%$ %v";

#ifdef SPIFFE_TUNNEL_HAVE_SYSTEMD
// syslog(3) priorities, as journald's PRIORITY= takes them.
int priority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return 7;
    case spdlog::level::info:
      return 6;
    case spdlog::level::warn:
      return 4;
    case spdlog::level::err:
      return 3;
    default:
      return 2;
  }
}

// Writes each line to the journal with sd_journal_sendv: MESSAGE (the text line), PRIORITY,
// SYSLOG_IDENTIFIER, and each field of a structured line upper-cased (PEER_ID=...). spdlog's own
// systemd_sink sends a fixed set of fields only, hence this one.
class JournaldSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::vector<std::string> entries;
    entries.push_back("MESSAGE=" + std::string(msg.payload.data(), msg.payload.size()));
    entries.push_back("PRIORITY=" + std::to_string(priority(msg.level)));
    entries.push_back("SYSLOG_IDENTIFIER=spiffe-tunnel");
    if (const base::LogLine* line = base::current_log_line()) {
      entries.push_back("MSG=" + std::string(line->msg));
      for (auto fields : {line->context, line->fields}) {
        add_fields(fields, entries);
      }
    }
    std::vector<iovec> iov;
    for (std::string& e : entries) {
      iov.push_back({e.data(), e.size()});
    }
    sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
  }
  void flush_() override {}

 private:
  static void add_fields(std::span<const base::LogField> fields, std::vector<std::string>& out) {
    for (const base::LogField& f : fields) {
      std::string entry;
      for (char c : f.key) {
        entry += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      }
      entry += '=';
      if (const auto* s = std::get_if<std::string_view>(&f.value)) {
        if (s->empty()) {
          continue;
        }
        entry += *s;
      } else {
        entry += std::to_string(std::get<std::int64_t>(f.value));
      }
      out.push_back(std::move(entry));
    }
  }
};
#endif

spdlog::sink_ptr make_sink(config::LogFormat format) {
  if (format == config::LogFormat::kJson) {
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    sink->set_formatter(base::make_json_formatter());
    return sink;
  }
#ifdef SPIFFE_TUNNEL_HAVE_SYSTEMD
  if (stderr_is_journal()) {
    return std::make_shared<JournaldSink>();  // the journal stamps time and priority itself
  }
#endif
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  sink->set_formatter(
      std::make_unique<spdlog::pattern_formatter>(kTextPattern, spdlog::pattern_time_type::utc));
  return sink;
}

}  // namespace

bool stderr_is_journal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (env == nullptr) {
    return false;
  }
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(env, "%llu:%llu", &dev, &ino) != 2) {
    return false;
  }
  struct stat st {};
  return ::fstat(STDERR_FILENO, &st) == 0 && static_cast<unsigned long long>(st.st_dev) == dev &&
         static_cast<unsigned long long>(st.st_ino) == ino;
}

void configure_logging(config::LogFormat format) {
  const auto level = spdlog::default_logger_raw()->level();
  auto logger = std::make_shared<spdlog::logger>("spiffe-tunnel", make_sink(format));
  logger->set_level(level);
  spdlog::set_default_logger(std::move(logger));
}

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
