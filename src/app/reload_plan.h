#pragma once
// What a reload changes: the running configuration against the newly read one, tunnel by tunnel
// (matched by name) and setting by setting. Pure: no sockets, no threads; the daemon carries the
// plan out (see TunnelSet::apply and docs/operations.md, "Reload").

#include <string>
#include <vector>

#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::app {

struct TunnelChange {
  enum class Kind {
    kUnchanged,  // listener and sessions stay as they are (log_sessions may change, see below)
    kPolicy,     // peer rules or OPA: new handshakes use the new policy, open sessions re-checked
    kReplace,    // listen, mode, target, TLS, limits or SVID: a new version starts, the old drains
    kRemove,     // stops accepting and drains
    kAdd,        // starts
  };
  Kind kind = Kind::kUnchanged;
  std::string name;
  // kReplace: the new version listens where the old one does, so it takes over the old listening
  // socket instead of binding a second one.
  bool same_listen = false;
  // kUnchanged or kPolicy: the tunnel's log_sessions differs; new sessions follow it.
  bool log_sessions_changed = false;
};

struct ReloadPlan {
  std::vector<TunnelChange> tunnels;  // running tunnels in order, then the added ones
  // Global settings that differ but cannot change while running, for the log ("identity",
  // "threads", ...). They keep their running values.
  std::vector<std::string> need_restart;
  bool log_level_changed = false;
  bool drain_timeout_changed = false;

  // True when carrying the plan out changes nothing at all.
  bool empty() const;
};

// Compares two validated configurations.
ReloadPlan plan_reload(const config::Config& running, const config::Config& next);

// `next` with the global settings that cannot change live taken from `running`: the
// configuration the daemon runs once the plan is carried out.
config::Config effective_config(const config::Config& running, config::Config next);

}  // namespace spiffe_tunnel::app
