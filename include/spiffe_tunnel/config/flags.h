#pragma once
// Command-line flag values as typed on the command line, and their translation into the same
// Config a YAML file gives. app/cli.cc defines the flags and fills these structs; an empty string
// means "not given", so every default comes from the Config model. Errors name the flag
// ("flag --allow-id: ...").

#include <string>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::config {

// The flags of `server` and `client`: one tunnel and its identity.
struct TunnelFlags {
  std::string name;  // "" = "server" / "client"
  std::string listen, target;
  std::string cert, key;
  std::string key_permissions;  // strict|warn
  std::vector<std::string> bundles;  // TRUST_DOMAIN=FILE
  std::string workload_api;
  bool use_workload_api = false;
  std::string svid, svid_hint;
  std::vector<std::string> peer_ids, peer_trust_domains, peer_patterns;
  bool allow_any = false;
  std::string opa_url, opa_timeout;
  std::string tls_min, tls_max, cipher_suites, ciphers, ktls, server_name;
  std::string key_update_records;
  bool session_resumption = false;
  std::string session_ticket_lifetime;
  std::string handshake_timeout, connect_timeout, idle_timeout;
  std::string max_connection_age;
  std::string max_handshakes, max_handshakes_per_source;
  std::string max_connections, buffer_size;
  std::string proxy_protocol;
  std::string listen_mode, listen_owner, listen_group;  // a created unix: listen socket
};

// The global flags, given before or after the command.
struct GlobalFlags {
  std::string log_level;
  std::string log_format;
  std::string threads;
  std::string admin;
  std::string busy_poll;
};

// Builds the Config of one `server` or `client` tunnel, not yet validated (see finalize()).
base::Result<Config> read_tunnel_flags(const TunnelFlags& flags, Mode mode);

// The identity flags of `flags` (--cert/--key/--bundle or --workload-api/--use-workload-api)
// into `out`; leaves it alone when none was given.
base::Status read_identity_flags(const TunnelFlags& flags, IdentityConfig& out);

// Parses the global flags that were given.
base::Result<Overrides> read_global_flags(const GlobalFlags& flags);

}  // namespace spiffe_tunnel::config
