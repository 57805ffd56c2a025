#pragma once
// The daemon's configuration: identity source, tunnels, admin endpoint. Built from a YAML file
// (load_config_file) or from command-line flags (app/cli.cc), and in both cases passed through
// validate() once; the result is immutable. Every error names where the bad value came from
// ("spiffe-tunnel.yaml:14:9: tunnel \"kafka-in\": ..." or "flag --allow-id: ...").

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::config {

enum class Mode { kServer, kClient };

struct HostPort {
  std::string host;
  uint16_t port = 0;
  std::string str() const;
};

struct TunnelConfig {
  std::string name;
  Mode mode = Mode::kServer;
  HostPort listen;
  HostPort target;
  std::string origin;  // where it was defined, for messages

  // Which SVID to present (neither: the first the identity source holds).
  std::optional<spiffe::SpiffeId> svid_id;
  std::optional<std::string> svid_hint;

  // Who may connect (server) / whom we expect (client). At least one rule, or allow_any_peer.
  std::vector<spiffe::SpiffeId> peer_ids;
  std::vector<spiffe::TrustDomain> peer_trust_domains;
  std::vector<std::string> peer_patterns;  // validated by policy::IdPattern::parse
  bool allow_any_peer = false;
  // Optional OPA decision after the rules above (or instead of them): the data API URL.
  std::string opa_url;
  std::chrono::milliseconds opa_timeout{2000};
  std::chrono::milliseconds opa_cache_ttl{30000};

  std::string tls_min_version = "1.3";
  std::string tls_max_version = "1.3";
  std::string tls13_ciphersuites;  // "" = default
  std::string tls12_ciphers;       // "" = default
  std::string ktls = "auto";       // auto | on | off
  std::string server_name;         // client: SNI, default none

  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds idle_timeout{0};
  std::size_t max_connections = 10000;
  // Userspace copy buffer per active direction (idle sessions hold none).
  std::size_t buffer_size = 64 * 1024;
};

struct IdentityConfig {
  enum class Kind { kNone, kFiles, kWorkloadApi };
  Kind kind = Kind::kNone;
  // files
  std::string cert_file;
  std::string key_file;
  std::vector<std::pair<spiffe::TrustDomain, std::string>> bundle_files;
  // workload API: "unix:///path" or "tcp://ip:port"; "" = SPIFFE_ENDPOINT_SOCKET
  std::string workload_api;
};

struct Config {
  IdentityConfig identity;
  std::vector<TunnelConfig> tunnels;
  std::string admin_listen;  // "" = no admin endpoint
  std::string log_level = "info";
  std::size_t threads = 0;   // 0 = number of cores
  std::chrono::milliseconds drain_timeout{15000};
  // How long a data-path thread keeps polling its sockets after its last event before it sleeps
  // in epoll_wait; 0 = sleep at once (see docs/configuration.md, "Busy polling").
  std::chrono::microseconds busy_poll{0};
};

// Loads and validates a YAML configuration file.
base::Result<Config> load_config_file(const std::string& path);
// Parses YAML text (`origin` names it in messages) and validates it.
base::Result<Config> load_config_text(const std::string& text, const std::string& origin);

// Checks the cross-field rules: unique tunnel names and listen addresses, an identity source,
// a peer rule per tunnel, files that exist and are readable, valid patterns and versions.
base::Status validate(const Config& config);

// "host:port" / "[v6]:port" / ":port" (→ 127.0.0.1).
base::Result<HostPort> parse_host_port(std::string_view text);
// "250ms", "10s", "5m", "1h", or a bare number of seconds.
base::Result<std::chrono::milliseconds> parse_duration(std::string_view text);
// Busy-poll window: "0" or "off", "200us", "1ms"; at most kMaxBusyPoll.
inline constexpr std::chrono::microseconds kMaxBusyPoll{10'000};
base::Result<std::chrono::microseconds> parse_busy_poll(std::string_view text);

}  // namespace spiffe_tunnel::config
