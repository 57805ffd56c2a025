#pragma once
// What `spiffe-tunnel wait-ready` waits for: an identity source (flags, or the identity section of
// a configuration file), the SVID it must deliver, the trust domains whose bundles it must hold,
// and how long to wait. Built from the command's flags as typed; errors name the flag.

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::config {

struct WaitReadyConfig {
  IdentityConfig identity;
  std::optional<spiffe::SpiffeId> svid_id;
  std::optional<std::string> svid_hint;
  std::vector<spiffe::TrustDomain> trust_domains;  // empty: the SVID's own trust domain
  std::chrono::milliseconds timeout{60000};
  std::string origin;  // "flags" or the configuration file, for messages
};

// The flags of wait-ready as typed; "" / empty means not given.
struct WaitReadyFlags {
  std::string config_file;  // -c: take the identity section of this file
  std::string workload_api, cert, key;
  std::vector<std::string> bundles;  // TRUST_DOMAIN=FILE
  std::string key_permissions;       // strict|warn, as for `server`/`client`
  std::string svid, svid_hint;
  std::vector<std::string> trust_domains;
  std::string timeout;
};

// Checks and parses the flags: one identity source (-c, files or the Workload API; with none,
// the Workload API at SPIFFE_ENDPOINT_SOCKET), at most one of --svid and --svid-hint, SPIFFE IDs
// and trust domains that parse, a positive timeout.
base::Result<WaitReadyConfig> read_wait_ready_flags(const WaitReadyFlags& flags);

}  // namespace spiffe_tunnel::config
