#pragma once
// Structured log lines. A line is a message and key/value fields, given once by the code that
// logs it; every output renders from them: the text line ("tunnel=kafka-in session=3
// from=10.0.0.7:51234 opened peer=spiffe://..."), one JSON object per line, or journald fields.
// log_line() goes through spdlog like any other line; while it runs, the line is reachable from
// the logging thread as current_log_line(), which is how a formatter or sink sees the fields.
// Lines logged straight through spdlog have no fields and come out with their text as the
// message. Any thread may log; fields only borrow their strings for the duration of the call.

#include <spdlog/common.h>
#include <spdlog/formatter.h>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>

namespace spiffe_tunnel::base {

// How the text line shows a field. JSON and journald always carry the key and the value.
enum class TextStyle {
  kKeyValue,  // " key=value" (or " label=value")
  kBare,      // " value"
  kLabelled,  // " label value" (or " key value")
  kParens,    // " (value)"
  kColon,     // ": value"
  kHidden,    // not in the text line
};

struct LogField {
  LogField(std::string_view k, std::string_view v, TextStyle s = TextStyle::kKeyValue,
           std::string_view l = {})
      : key(k), value(v), style(s), label(l) {}
  LogField(std::string_view k, const std::string& v, TextStyle s = TextStyle::kKeyValue,
           std::string_view l = {})
      : LogField(k, std::string_view(v), s, l) {}
  LogField(std::string_view k, const char* v, TextStyle s = TextStyle::kKeyValue,
           std::string_view l = {})
      : LogField(k, std::string_view(v), s, l) {}
  template <std::integral T>
  LogField(std::string_view k, T v, TextStyle s = TextStyle::kKeyValue, std::string_view l = {})
      : key(k), value(static_cast<std::int64_t>(v)), style(s), label(l) {}

  std::string_view key;  // JSON key; journald takes it upper-cased ("peer_id" → PEER_ID)
  // A string (an empty one leaves the field out of every form) or a number.
  std::variant<std::string_view, std::int64_t> value;
  TextStyle style;
  std::string_view label;  // the key in the text line when it differs ("peer" for peer_id)
};

// What a line says: who (`context`, before the message in the text line), what (`msg`, a short
// stable phrase such as "opened"), and the facts (`fields`, after it).
struct LogLine {
  std::span<const LogField> context;
  std::string_view msg;
  std::span<const LogField> fields;
};

// Logs `line` at `level` through spdlog's default logger; nothing is built when the level is off.
void log_line(spdlog::level::level_enum level, const LogLine& line);

// The line log_line() is logging on this thread, or null (for formatters and sinks).
const LogLine* current_log_line();

// The text form: context as key=value, the message, then each field in its TextStyle.
std::string render_text(const LogLine& line);

// The JSON form, one object without a newline: time (RFC 3339 UTC with milliseconds), level, msg,
// then the context and fields in their order. Strings are escaped (quotes, backslashes, control
// characters; bytes that are not UTF-8 become U+FFFD), so every line parses.
std::string render_json(std::chrono::system_clock::time_point time, spdlog::level::level_enum level,
                        std::string_view msg, const LogLine* line);

// The level's name as log_level spells it: trace, debug, info, warn, error, critical.
std::string_view level_name(spdlog::level::level_enum level);

// An spdlog formatter writing render_json() lines: the current LogLine's message and fields, or
// the plain line's text as msg.
std::unique_ptr<spdlog::formatter> make_json_formatter();

}  // namespace spiffe_tunnel::base
