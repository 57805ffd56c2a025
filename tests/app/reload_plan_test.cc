// plan_reload: what a reload does to each tunnel and which global settings need a restart.

#include <catch2/catch.hpp>

#include <string>

#include "app/reload_plan.h"

namespace spiffe_tunnel::app {
namespace {

using Kind = TunnelChange::Kind;

// Two tunnels; `edit` replaces one marker line to make the variant under test.
std::string yaml(const std::string& kafka_in_extra = "", const std::string& globals = "",
                 const std::string& kafka_out = "") {
  return "identity:\n  workload_api: unix:///run/spire/agent.sock\n" + globals +
         "tunnels:\n"
         "  - name: kafka-in\n"
         "    mode: server\n"
         "    listen: 0.0.0.0:9093\n"
         "    target: 127.0.0.1:9092\n"
         "    allow: { ids: [spiffe://site-a.example/producer] }\n" +
         kafka_in_extra +
         (kafka_out.empty() ? "  - name: kafka-out\n"
                              "    mode: client\n"
                              "    listen: 127.0.0.1:19092\n"
                              "    target: kafka.site-d.example:9093\n"
                              "    expect: { ids: [spiffe://site-d.example/kafka] }\n"
                            : kafka_out);
}

config::Config parse(const std::string& text) {
  auto c = config::read_config_text(text, "test.yaml");
  REQUIRE(c.ok());
  return *c;
}

const TunnelChange& change(const ReloadPlan& plan, const std::string& name) {
  for (const auto& c : plan.tunnels) {
    if (c.name == name) {
      return c;
    }
  }
  FAIL("no change for tunnel " << name);
  throw;  // unreachable
}

TEST_CASE("the same configuration plans nothing") {
  const auto plan = plan_reload(parse(yaml()), parse(yaml()));
  CHECK(plan.empty());
  CHECK(change(plan, "kafka-in").kind == Kind::kUnchanged);
  CHECK(change(plan, "kafka-out").kind == Kind::kUnchanged);
}

TEST_CASE("moving a tunnel within the file, or reformatting it, changes nothing") {
  const std::string out =
      "  - name: kafka-out\n    mode: client\n    listen: 127.0.0.1:19092\n"
      "    target: kafka.site-d.example:9093\n"
      "    expect:\n      ids: [spiffe://site-d.example/kafka]\n";
  const auto plan = plan_reload(parse(yaml()), parse("\n\n" + yaml("", "", out)));
  CHECK(plan.empty());
}

TEST_CASE("peer rules and OPA are policy changes; the listener stays") {
  const auto running = parse(yaml());
  SECTION("allow rules") {
    auto next = running;
    next.tunnels[0].peers.trust_domains.push_back(*spiffe::TrustDomain::parse("site-b.example"));
    const auto plan = plan_reload(running, next);
    CHECK(change(plan, "kafka-in").kind == Kind::kPolicy);
    CHECK(change(plan, "kafka-out").kind == Kind::kUnchanged);
    CHECK_FALSE(plan.empty());
  }
  SECTION("an OPA decision added") {
    const auto next = parse(yaml("    opa: { url: http://127.0.0.1:8181/v1/data/tunnels/allow }\n"));
    CHECK(change(plan_reload(running, next), "kafka-in").kind == Kind::kPolicy);
  }
}

TEST_CASE("target, limits, TLS and SVID changes replace the tunnel, on the same listener") {
  const auto running = parse(yaml());
  for (const std::string extra :
       {"    max_connections: 5\n", "    tls: { ktls: off }\n", "    svid: { hint: external }\n",
        "    timeouts: { idle: 1h }\n"}) {
    const auto plan = plan_reload(running, parse(yaml(extra)));
    INFO(extra);
    CHECK(change(plan, "kafka-in").kind == Kind::kReplace);
    CHECK(change(plan, "kafka-in").same_listen);
  }
  auto next = running;
  next.tunnels[0].target = next.tunnels[1].listen;
  CHECK(change(plan_reload(running, next), "kafka-in").kind == Kind::kReplace);
}

TEST_CASE("a new listen address replaces the tunnel on a new listener") {
  const auto running = parse(yaml());
  auto next = running;
  next.tunnels[1].listen = next.tunnels[0].listen;
  next.tunnels[0].listen = running.tunnels[1].listen;
  const auto plan = plan_reload(running, next);
  CHECK(change(plan, "kafka-in").kind == Kind::kReplace);
  CHECK_FALSE(change(plan, "kafka-in").same_listen);
}

TEST_CASE("tunnels are matched by name: a renamed tunnel is one removed and one added") {
  const auto running = parse(yaml());
  auto next = running;
  next.tunnels[1].name = "kafka-mirror";
  const auto plan = plan_reload(running, next);
  CHECK(change(plan, "kafka-out").kind == Kind::kRemove);
  CHECK(change(plan, "kafka-mirror").kind == Kind::kAdd);
  CHECK(change(plan, "kafka-in").kind == Kind::kUnchanged);
  REQUIRE(plan.tunnels.size() == 3);
  CHECK(plan.tunnels.back().name == "kafka-mirror");
}

TEST_CASE("log_sessions changes only what new sessions log") {
  const auto running = parse(yaml());
  auto next = parse(yaml("    log_sessions: false\n"));
  const auto plan = plan_reload(running, next);
  CHECK(change(plan, "kafka-in").kind == Kind::kUnchanged);
  CHECK(change(plan, "kafka-in").log_sessions_changed);
  CHECK_FALSE(change(plan, "kafka-out").log_sessions_changed);
  CHECK_FALSE(plan.empty());
  next.tunnels[0].peers.any = true;
  CHECK(change(plan_reload(running, next), "kafka-in").kind == Kind::kPolicy);
}

TEST_CASE("settings that need a restart are named and keep their running values") {
  const auto running = parse(yaml());
  const auto next = parse(yaml("",
                               "threads: 3\nbusy_poll: 200us\nadmin: { listen: 127.0.0.1:9901 }\n"
                               "log_level: debug\ndrain_timeout: 2s\nlog_format: json\n"));
  const auto plan = plan_reload(running, next);
  CHECK(plan.need_restart ==
        std::vector<std::string>{"threads", "busy_poll", "admin", "log_format"});
  CHECK(plan.log_level_changed);
  CHECK(plan.drain_timeout_changed);
  const auto effective = effective_config(running, next);
  CHECK(effective.threads == running.threads);
  CHECK(effective.busy_poll == running.busy_poll);
  CHECK(effective.admin == running.admin);
  CHECK(effective.log_format == running.log_format);
  CHECK(effective.log_level == config::LogLevel::kDebug);
  CHECK(effective.drain_timeout == std::chrono::seconds(2));

  auto other_source = running;
  other_source.identity.workload_api = "unix:///run/other.sock";
  CHECK(plan_reload(running, other_source).need_restart == std::vector<std::string>{"identity"});
}

}  // namespace
}  // namespace spiffe_tunnel::app
