#include "reload_plan.h"

#include <algorithm>

namespace spiffe_tunnel::app {
namespace {

using config::Config;
using config::TunnelConfig;

const TunnelConfig* find(const std::vector<TunnelConfig>& tunnels, const std::string& name) {
  auto it = std::find_if(tunnels.begin(), tunnels.end(),
                         [&](const TunnelConfig& t) { return t.name == name; });
  return it == tunnels.end() ? nullptr : &*it;
}

// What must happen to a tunnel present in both configurations. `origin` (where it was defined)
// never counts: moving a tunnel within the file changes nothing.
// log_sessions is compared apart: it changes what new sessions log, nothing else.
TunnelChange::Kind compare(TunnelConfig a, TunnelConfig b) {
  a.origin = b.origin;
  a.log_sessions = b.log_sessions;
  if (a == b) {
    return TunnelChange::Kind::kUnchanged;
  }
  a.peers = b.peers;
  a.opa = b.opa;
  return a == b ? TunnelChange::Kind::kPolicy : TunnelChange::Kind::kReplace;
}

}  // namespace

bool ReloadPlan::empty() const {
  return need_restart.empty() && !log_level_changed && !drain_timeout_changed &&
         std::all_of(tunnels.begin(), tunnels.end(), [](const TunnelChange& c) {
           return c.kind == TunnelChange::Kind::kUnchanged && !c.log_sessions_changed;
         });
}

ReloadPlan plan_reload(const Config& running, const Config& next) {
  ReloadPlan plan;
  for (const TunnelConfig& old : running.tunnels) {
    const TunnelConfig* now = find(next.tunnels, old.name);
    if (now == nullptr) {
      plan.tunnels.push_back({TunnelChange::Kind::kRemove, old.name});
      continue;
    }
    const auto kind = compare(old, *now);
    plan.tunnels.push_back({kind, old.name, old.listen == now->listen,
                            old.log_sessions != now->log_sessions});
  }
  for (const TunnelConfig& now : next.tunnels) {
    if (find(running.tunnels, now.name) == nullptr) {
      plan.tunnels.push_back({TunnelChange::Kind::kAdd, now.name});
    }
  }
  if (running.identity != next.identity) {
    plan.need_restart.emplace_back("identity");
  }
  if (running.threads != next.threads) {
    plan.need_restart.emplace_back("threads");
  }
  if (running.busy_poll != next.busy_poll) {
    plan.need_restart.emplace_back("busy_poll");
  }
  if (running.admin != next.admin) {
    plan.need_restart.emplace_back("admin");
  }
  if (running.log_format != next.log_format) {
    plan.need_restart.emplace_back("log_format");
  }
  plan.log_level_changed = running.log_level != next.log_level;
  plan.drain_timeout_changed = running.drain_timeout != next.drain_timeout;
  return plan;
}

Config effective_config(const Config& running, Config next) {
  next.identity = running.identity;
  next.threads = running.threads;
  next.busy_poll = running.busy_poll;
  next.admin = running.admin;
  next.log_format = running.log_format;
  return next;
}

}  // namespace spiffe_tunnel::app
