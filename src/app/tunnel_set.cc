#include "tunnel_set.h"

#include <spdlog/spdlog.h>

#include <asio/post.hpp>

#include <algorithm>
#include <map>

#include "spiffe_tunnel/base/clock.h"
#include "wiring.h"

namespace spiffe_tunnel::app {
namespace {

using Kind = TunnelChange::Kind;

const TunnelChange* change_for(const ReloadPlan& plan, const std::string& name) {
  for (const auto& c : plan.tunnels) {
    if (c.name == name) {
      return &c;
    }
  }
  return nullptr;
}

}  // namespace

TunnelSet::TunnelSet(tunnel::IoPool& pool, base::MetricsRegistry& metrics,
                     const identity::IdentityStore& store, ActivatedSockets& activated)
    : pool_(pool), metrics_(metrics), store_(store), activated_(activated) {}

base::Result<std::unique_ptr<tunnel::Tunnel>> TunnelSet::make(
    const config::TunnelConfig& t, std::shared_ptr<tunnel::Listener> listener) const {
  const TunnelPolicy policy = make_policy(t, &metrics_);
  auto provider = std::make_unique<tls::ContextProvider>(make_tls_options(t, policy), store_,
                                                         base::SystemClock::instance());
  tunnel::TunnelOptions options = make_tunnel_options(t, policy);
  options.listener = std::move(listener);
  if (auto* inherited = std::get_if<tunnel::InheritedSocket>(&options.listen);
      inherited && !options.listener) {
    auto fd = activated_.take(inherited->name);
    if (!fd) {
      return base::make_error("tunnel \"" + t.name + "\": listen " + t.listen.str() + ": " +
                              fd.error().message);
    }
    inherited->fd = *fd;
  }
  return tunnel::Tunnel::create(std::move(options), std::move(provider), pool_, metrics_);
}

base::Status TunnelSet::build(const std::vector<config::TunnelConfig>& tunnels) {
  std::vector<Running> built;
  for (const auto& t : tunnels) {
    auto made = make(t);
    if (!made) {
      return made.error();
    }
    built.push_back({t, std::move(*made)});
  }
  std::lock_guard lock(mutex_);
  running_ = std::move(built);
  return {};
}

void TunnelSet::start() {
  std::lock_guard lock(mutex_);
  for (auto& r : running_) {
    r.tunnel->start();
  }
}

base::Status TunnelSet::apply(const ReloadPlan& plan, const std::vector<config::TunnelConfig>& next,
                              std::chrono::milliseconds drain_timeout) {
  // Everything that can fail on the environment happens before anything changes: binding.
  std::map<std::string, std::unique_ptr<tunnel::Tunnel>> prepared;
  for (const auto& t : next) {
    const TunnelChange* c = change_for(plan, t.name);
    if (c != nullptr && (c->kind == Kind::kAdd || (c->kind == Kind::kReplace && !c->same_listen))) {
      auto made = make(t);
      if (!made) {
        return made.error();  // `prepared` closes the listeners bound so far
      }
      prepared.emplace(t.name, std::move(*made));
    }
  }

  const auto deadline = std::chrono::steady_clock::now() + drain_timeout;
  std::lock_guard lock(mutex_);
  std::vector<Running> now;
  for (const auto& t : next) {
    const TunnelChange* c = change_for(plan, t.name);
    auto old = std::find_if(running_.begin(), running_.end(),
                            [&](const Running& r) { return r.config.name == t.name; });
    std::unique_ptr<tunnel::Tunnel> p;
    if (auto it = prepared.find(t.name); it != prepared.end()) {
      p = std::move(it->second);
    }
    if (old == running_.end()) {  // added
      p->start();
      spdlog::info("reload: tunnel \"{}\" added", t.name);
      now.push_back({t, std::move(p)});
      continue;
    }
    auto tunnel = carry_over(*c, *old, t, std::move(p), deadline);
    if (tunnel) {
      now.push_back({t, std::move(tunnel)});
    }
  }
  for (auto& r : running_) {
    if (r.tunnel) {  // not carried over: removed
      spdlog::info("reload: tunnel \"{}\" removed; draining {} open session(s)", r.config.name,
                   r.tunnel->active_sessions());
      retire(std::move(r.tunnel), deadline);
    }
  }
  running_ = std::move(now);
  return {};
}

std::unique_ptr<tunnel::Tunnel> TunnelSet::carry_over(const TunnelChange& change, Running& old,
                                                      const config::TunnelConfig& next,
                                                      std::unique_ptr<tunnel::Tunnel> prepared,
                                                      std::chrono::steady_clock::time_point deadline) {
  if (change.log_sessions_changed && change.kind != Kind::kReplace) {
    old.tunnel->set_log_sessions(next.log_sessions.value_or(true));
    spdlog::info("reload: tunnel \"{}\" log_sessions {}", next.name,
                 next.log_sessions.value_or(true) ? "on" : "off");
  }
  switch (change.kind) {
    case Kind::kUnchanged:
      return std::move(old.tunnel);
    case Kind::kPolicy: {
      const TunnelPolicy policy = make_policy(next, &metrics_);
      old.tunnel->update_policy(
          std::make_unique<tls::ContextProvider>(make_tls_options(next, policy), store_,
                                                 base::SystemClock::instance()),
          policy.opa);
      spdlog::info("reload: tunnel \"{}\" policy changed; open sessions re-checked", next.name);
      return std::move(old.tunnel);
    }
    case Kind::kReplace: {
      if (!prepared) {  // same listen address: the new version takes the old one's socket
        auto made = make(next, old.tunnel->release_listener());
        if (!made) {
          spdlog::error("reload: tunnel \"{}\": {}", next.name, made.error().message);
          retire(std::move(old.tunnel), deadline);
          return nullptr;
        }
        prepared = std::move(*made);
      } else {
        old.tunnel->stop();
      }
      spdlog::info("reload: tunnel \"{}\" replaced; the previous version drains {} open session(s)",
                   next.name, old.tunnel->active_sessions());
      retire(std::move(old.tunnel), deadline);
      prepared->start();
      return prepared;
    }
    case Kind::kRemove:
    case Kind::kAdd:
      break;
  }
  return nullptr;
}

void TunnelSet::retire(std::unique_ptr<tunnel::Tunnel> tunnel,
                       std::chrono::steady_clock::time_point deadline) {
  tunnel->stop();
  retired_.push_back({std::move(tunnel), deadline, false});
}

void TunnelSet::reap() {
  std::lock_guard lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  for (auto it = retired_.begin(); it != retired_.end();) {
    tunnel::Tunnel& t = *it->tunnel;
    if (t.active_sessions() == 0) {
      spdlog::info("tunnel={} previous version drained", t.name());
      // Destroyed on the listener's thread, after the close that stop() posted there.
      asio::post(pool_.at(0), [gone = std::shared_ptr<tunnel::Tunnel>(std::move(it->tunnel))] {});
      it = retired_.erase(it);
      continue;
    }
    if (!it->closed && now >= it->deadline) {
      spdlog::warn("tunnel={} drain timeout: closing {} open session(s)", t.name(),
                   t.active_sessions());
      t.close_sessions();
      it->closed = true;
    }
    ++it;
  }
}

// No lock: only the main thread changes the set, and the admin thread must be able to answer
// probes while this waits.
void TunnelSet::drain(std::chrono::steady_clock::time_point deadline) {
  for (auto& r : running_) {
    r.tunnel->stop();
  }
  for (auto& r : running_) {
    r.tunnel->drain(deadline);
  }
  for (auto& r : retired_) {
    r.tunnel->drain(std::min(deadline, r.deadline));
  }
}

void TunnelSet::clear() {
  std::lock_guard lock(mutex_);
  running_.clear();
  retired_.clear();
}

void TunnelSet::recheck_identity() {
  std::lock_guard lock(mutex_);
  for (const auto& r : running_) {
    r.tunnel->recheck_identity();
  }
  for (const auto& r : retired_) {
    r.tunnel->recheck_identity();
  }
}

void TunnelSet::for_each(const std::function<void(const tunnel::Tunnel&)>& fn) const {
  std::lock_guard lock(mutex_);
  for (const auto& r : running_) {
    fn(*r.tunnel);
  }
}

void TunnelSet::for_each_draining(const std::function<void(const tunnel::Tunnel&)>& fn) const {
  std::lock_guard lock(mutex_);
  for (const auto& r : retired_) {
    fn(*r.tunnel);
  }
}

std::size_t TunnelSet::size() const {
  std::lock_guard lock(mutex_);
  return running_.size();
}

}  // namespace spiffe_tunnel::app
