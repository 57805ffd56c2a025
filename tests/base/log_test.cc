#include "spiffe_tunnel/base/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include <catch2/catch.hpp>

using namespace spiffe_tunnel::base;

namespace {

// 2026-03-01T12:34:56.789Z
std::chrono::system_clock::time_point kTime =
    std::chrono::system_clock::time_point(std::chrono::milliseconds(1772368496789));

// Routes spdlog's default logger into a string for one test, with `formatter`.
struct CapturedLog {
  explicit CapturedLog(std::unique_ptr<spdlog::formatter> formatter) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
    sink->set_formatter(std::move(formatter));
    previous = spdlog::default_logger();
    auto logger = std::make_shared<spdlog::logger>("test", sink);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
  }
  ~CapturedLog() { spdlog::set_default_logger(previous); }
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> previous;
};

}  // namespace

TEST_CASE("the text line renders context, message and fields in their styles") {
  const LogField who[] = {{"tunnel", "kafka-in"}, {"session", 7}, {"from", "10.0.0.7:51234"}};
  const LogField facts[] = {{"peer_id", "spiffe://a/x", TextStyle::kKeyValue, "peer"},
                            {"authorized_by", "id", TextStyle::kParens},
                            {"tls_version", "TLSv1.3", TextStyle::kBare},
                            {"target", "127.0.0.1:80", TextStyle::kLabelled},
                            {"reason", "closed", TextStyle::kHidden},
                            {"empty", "", TextStyle::kParens},
                            {"bytes_to_peer", std::uint64_t{42}},
                            {"detail", "why", TextStyle::kColon}};
  CHECK(render_text({who, "opened", facts}) ==
        "tunnel=kafka-in session=7 from=10.0.0.7:51234 opened peer=spiffe://a/x (id) TLSv1.3 "
        "target 127.0.0.1:80 bytes_to_peer=42: why");
  CHECK(render_text({{}, "plain", {}}) == "plain");
}

TEST_CASE("the JSON line has time, level and msg first, then the fields in order") {
  const LogField who[] = {{"tunnel", "t"}, {"session", 3}};
  const LogField facts[] = {{"peer_id", "spiffe://a/x", TextStyle::kKeyValue, "peer"},
                            {"reason", "closed", TextStyle::kHidden},
                            {"ktls_detail", "", TextStyle::kParens},
                            {"duration_ms", -5}};
  const LogLine line{who, "closed", facts};
  CHECK(render_json(kTime, spdlog::level::warn, "closed", &line) ==
        R"({"time":"2026-03-01T12:34:56.789Z","level":"warn","msg":"closed","tunnel":"t",)"
        R"("session":3,"peer_id":"spiffe://a/x","reason":"closed","duration_ms":-5})");
  CHECK(render_json(kTime, spdlog::level::err, "plain", nullptr) ==
        R"({"time":"2026-03-01T12:34:56.789Z","level":"error","msg":"plain"})");
}

TEST_CASE("JSON strings escape quotes, backslashes, newlines and control characters") {
  const std::string nasty = std::string("a\"b\\c\nd\re\tf\x01g\x1fh\x7fi") + '\0' + "j";
  const LogField facts[] = {{"detail", nasty}};
  const LogLine line{{}, "m\"sg\n", facts};
  const std::string out = render_json(kTime, spdlog::level::info, line.msg, &line);
  CHECK(out.find('\n') == std::string::npos);
  CHECK(out.find(R"("msg":"m\"sg\n")") != std::string::npos);
  CHECK(out.find(R"("detail":"a\"b\\c\nd\re\tf\u0001g\u001fh\u007fi\u0000j")") !=
        std::string::npos);
  // An independent parser reads back exactly what was logged.
  const auto j = nlohmann::json::parse(out);
  CHECK(j["detail"] == nasty);
  CHECK(j["msg"] == "m\"sg\n");
}

TEST_CASE("JSON keeps UTF-8 and replaces bytes that are not UTF-8") {
  const std::string text = "caf\xc3\xa9 \xe2\x86\x92 \xf0\x9f\x94\x92";  // café → 🔒
  const std::string bad = "x\xff" "y\xc3" "z\xed\xa0\x80" "w\xe2\x82";    // stray, cut, surrogate
  const LogField facts[] = {{"ok", text}, {"bad", bad}};
  const LogLine line{{}, "m", facts};
  const auto j = nlohmann::json::parse(render_json(kTime, spdlog::level::info, "m", &line));
  CHECK(j["ok"] == text);
  CHECK(j["bad"] == "x\xef\xbf\xbdy\xef\xbf\xbdz\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdw"
                    "\xef\xbf\xbd\xef\xbf\xbd");
}

TEST_CASE("log_line reaches a JSON formatter with its fields; plain lines become msg") {
  CapturedLog log(make_json_formatter());
  const LogField who[] = {{"tunnel", "t"}};
  const LogField facts[] = {{"reason", "not_authorized"}, {"detail", "no", TextStyle::kColon}};
  log_line(spdlog::level::warn, {who, "rejected", facts});
  spdlog::info("plain {} line", "old-style");
  log_line(spdlog::level::debug, {who, "not logged at info", {}});
  CHECK(current_log_line() == nullptr);

  std::istringstream lines(log.out.str());
  std::string first, second, third;
  REQUIRE(std::getline(lines, first));
  REQUIRE(std::getline(lines, second));
  CHECK_FALSE(std::getline(lines, third));
  const auto a = nlohmann::json::parse(first);
  CHECK(a["msg"] == "rejected");
  CHECK(a["level"] == "warn");
  CHECK(a["tunnel"] == "t");
  CHECK(a["reason"] == "not_authorized");
  const auto b = nlohmann::json::parse(second);
  CHECK(b["msg"] == "plain old-style line");
  CHECK(b.size() == 3);
  CHECK(std::string(b["time"]).size() == std::string("2026-03-01T12:34:56.789Z").size());
}

TEST_CASE("log_line writes today's text line through a pattern formatter") {
  CapturedLog log(std::make_unique<spdlog::pattern_formatter>("%l %v"));
  const LogField who[] = {{"tunnel", "t"}, {"session", 1}, {"from", "1.2.3.4:5"}};
  const LogField facts[] = {{"reason", "not_ready"}, {"detail", "no identity", TextStyle::kColon}};
  log_line(spdlog::level::warn, {who, "rejected", facts});
  CHECK(log.out.str() ==
        "warning tunnel=t session=1 from=1.2.3.4:5 rejected reason=not_ready: no identity\n");
}
