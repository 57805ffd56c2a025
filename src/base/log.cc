#include "spiffe_tunnel/base/log.h"

#include <spdlog/details/log_msg.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <ctime>

namespace spiffe_tunnel::base {
namespace {

thread_local const LogLine* t_current = nullptr;

bool is_empty(const LogField& f) {
  const auto* s = std::get_if<std::string_view>(&f.value);
  return s != nullptr && s->empty();
}

void append_value(std::string& out, const LogField& f) {
  if (const auto* s = std::get_if<std::string_view>(&f.value)) {
    out += *s;
  } else {
    out += std::to_string(std::get<std::int64_t>(f.value));
  }
}

void append_key_value(std::string& out, const LogField& f) {
  out += f.label.empty() ? f.key : f.label;
  out += '=';
  append_value(out, f);
}

// Length of the well-formed UTF-8 sequence at s[i], or 0 (RFC 3629: no overlongs, no
// surrogates, nothing above U+10FFFF).
size_t utf8_length(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    lo = c == 0xE0 ? 0xA0 : 0x80;
    hi = c == 0xED ? 0x9F : 0xBF;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    lo = c == 0xF0 ? 0x90 : 0x80;
    hi = c == 0xF4 ? 0x8F : 0xBF;
  } else {
    return 0;
  }
  if (i + n > s.size()) {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) {
      return 0;
    }
  }
  return n;
}

// RFC 8259 §7: quotes, backslashes and control characters escaped; other text as UTF-8.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = utf8_length(s, i);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    ++i;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void append_json_fields(std::string& out, std::span<const LogField> fields) {
  for (const LogField& f : fields) {
    if (is_empty(f)) {
      continue;
    }
    out += ',';
    append_json_string(out, f.key);
    out += ':';
    if (const auto* s = std::get_if<std::string_view>(&f.value)) {
      append_json_string(out, *s);
    } else {
      out += std::to_string(std::get<std::int64_t>(f.value));
    }
  }
}

std::string rfc3339_ms(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000 - (ms % 1000 < 0 ? 1 : 0));
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];  // fits any int the format could be given
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(((ms % 1000) + 1000) % 1000));
  return buf;
}

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& m, spdlog::memory_buf_t& dest) override {
    const LogLine* line = current_log_line();
    const std::string_view msg =
        line != nullptr ? line->msg : std::string_view(m.payload.data(), m.payload.size());
    const std::string out = render_json(m.time, m.level, msg, line);
    dest.append(out.data(), out.data() + out.size());
    dest.push_back('\n');
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

}  // namespace

void log_line(spdlog::level::level_enum level, const LogLine& line) {
  auto logger = spdlog::default_logger_raw();
  if (!logger->should_log(level)) {
    return;
  }
  const LogLine* outer = t_current;
  t_current = &line;
  logger->log(level, "{}", render_text(line));
  t_current = outer;
}

const LogLine* current_log_line() { return t_current; }

std::string render_text(const LogLine& line) {
  std::string out;
  for (const LogField& f : line.context) {
    if (f.style == TextStyle::kHidden || is_empty(f)) {
      continue;
    }
    append_key_value(out, f);
    out += ' ';
  }
  out += line.msg;
  for (const LogField& f : line.fields) {
    if (f.style == TextStyle::kHidden || is_empty(f)) {
      continue;
    }
    switch (f.style) {
      case TextStyle::kKeyValue:
        out += ' ';
        append_key_value(out, f);
        break;
      case TextStyle::kBare:
        out += ' ';
        append_value(out, f);
        break;
      case TextStyle::kLabelled:
        out += ' ';
        out += f.label.empty() ? f.key : f.label;
        out += ' ';
        append_value(out, f);
        break;
      case TextStyle::kParens:
        out += " (";
        append_value(out, f);
        out += ')';
        break;
      case TextStyle::kColon:
        out += ": ";
        append_value(out, f);
        break;
      case TextStyle::kHidden:
        break;
    }
  }
  return out;
}

std::string render_json(std::chrono::system_clock::time_point time,
                        spdlog::level::level_enum level, std::string_view msg,
                        const LogLine* line) {
  std::string out = "{\"time\":\"" + rfc3339_ms(time) + "\",\"level\":\"";
  out += level_name(level);
  out += "\",\"msg\":";
  append_json_string(out, msg);
  if (line != nullptr) {
    append_json_fields(out, line->context);
    append_json_fields(out, line->fields);
  }
  out += '}';
  return out;
}

std::string_view level_name(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    default:
      return "off";
  }
}

std::unique_ptr<spdlog::formatter> make_json_formatter() {
  return std::make_unique<JsonFormatter>();
}

}  // namespace spiffe_tunnel::base
