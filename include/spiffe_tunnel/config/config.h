#pragma once
// The daemon's configuration: identity source, tunnels, admin endpoint, as one typed model. It is
// read from a YAML file (read_config_file) or from command-line flags (config/flags.h); global
// flags then apply as Overrides, and finalize() runs the single validate(). The validated Config
// is handed on as `const Config&` and never changed. Every error names where the bad value came
// from ("spiffe-tunnel.yaml:14:9: tunnel \"kafka-in\": ..." or "flag --allow-id: ...").
//
// Each value's default lives here, in the member initialisers; the flags take theirs from these.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/id_pattern.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::config {

enum class Mode { kServer, kClient };
enum class KtlsMode { kAuto, kOn, kOff };
enum class TlsVersion { k1_2, k1_3 };
enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kCritical, kOff };
// Server tunnels: whether the target gets a PROXY protocol header first (docs/proxy-protocol.md).
enum class ProxyProtocol { kOff, kV2 };
enum class LogFormat { kText, kJson };
// What to do with a private key file that group or others may access.
enum class KeyPermissions { kStrict, kWarn };

struct HostPort {
  std::string host;
  uint16_t port = 0;
  // "host:port", "[v6]:port".
  std::string str() const;
  friend bool operator==(const HostPort&, const HostPort&) = default;
};

// A unix stream socket: "unix:/run/app.sock" or "unix:///run/app.sock". Always absolute.
struct UnixPath {
  std::string path;
  std::string str() const { return "unix:" + path; }
  friend bool operator==(const UnixPath&, const UnixPath&) = default;
};

// A listening socket handed over by systemd socket activation, by its FileDescriptorName=
// ("systemd:NAME"). Only a listener can be one.
struct SystemdSocket {
  std::string name;
  std::string str() const { return "systemd:" + name; }
  friend bool operator==(const SystemdSocket&, const SystemdSocket&) = default;
};

// Where a listener binds or a connector connects: TCP host:port, a unix socket path, or a named
// socket from systemd. Code that asks tcp() (or visits `address`) decides what it supports.
struct Endpoint {
  std::variant<HostPort, UnixPath, SystemdSocket> address;

  // The TCP address, or null for another kind.
  const HostPort* tcp() const { return std::get_if<HostPort>(&address); }
  const UnixPath* unix_path() const { return std::get_if<UnixPath>(&address); }
  const SystemdSocket* systemd() const { return std::get_if<SystemdSocket>(&address); }
  std::string str() const;
  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

// Who owns a unix socket the daemon creates, and its permission bits (like systemd's
// SocketMode=/SocketUser=/SocketGroup=). Unset: the process's umask, user and group.
struct UnixSocketOptions {
  std::optional<uint32_t> mode;  // permission bits, at most 0777
  std::optional<uint32_t> owner;  // uid (a user name is resolved when read)
  std::optional<uint32_t> group;  // gid
  bool empty() const { return !mode && !owner && !group; }
  friend bool operator==(const UnixSocketOptions&, const UnixSocketOptions&) = default;
};

// Who may connect (server) / whom we expect (client). A peer passes when any rule matches.
struct PeerRules {
  std::vector<spiffe::SpiffeId> ids;
  std::vector<spiffe::TrustDomain> trust_domains;
  std::vector<spiffe::IdPattern> patterns;
  bool any = false;  // any peer that verifies against a held bundle

  // True when no rule can allow anyone.
  bool empty() const { return ids.empty() && trust_domains.empty() && patterns.empty() && !any; }
  friend bool operator==(const PeerRules&, const PeerRules&) = default;
};

// OPA's data API, parsed from "http://host:port/v1/data/<package>/<rule>".
struct OpaEndpoint {
  std::string host;  // IPv6 without brackets
  uint16_t port = 0;
  std::string path;  // starts with /v1/data
  friend bool operator==(const OpaEndpoint&, const OpaEndpoint&) = default;
};

// An OPA decision asked after the peer rules (or instead of them).
struct OpaConfig {
  OpaEndpoint endpoint;
  std::chrono::milliseconds timeout{2000};     // no answer in time denies
  std::chrono::milliseconds cache_ttl{30000};  // 0: no cache
  friend bool operator==(const OpaConfig&, const OpaConfig&) = default;
};

struct TlsConfig {
  TlsVersion min_version = TlsVersion::k1_3;
  TlsVersion max_version = TlsVersion::k1_3;
  std::string tls13_ciphersuites;  // "" = the tls module's default
  std::string tls12_ciphers;       // "" = the tls module's default
  KtlsMode ktls = KtlsMode::kAuto;
  std::string server_name;  // client: SNI, "" = none
  // TLS 1.3 AEAD usage limit (RFC 8446 §5.5): records one traffic key protects before the own
  // record layer sends a KeyUpdate, and the point where a kernel-offloaded AES-GCM direction,
  // which cannot re-key, ends the session (reason aead_limit). 2^23 records = 128 GiB of full
  // records, half of what the RFC allows; low values are for tests.
  uint64_t key_update_records = uint64_t{1} << 23;
  // TLS 1.3 session resumption (docs/security.md): a server tunnel issues tickets, a client
  // tunnel keeps and offers them. Both ends of a pair must enable it.
  bool session_resumption = false;
  // How long a ticket may be used, at most; never past the peer's certificate chain. The ticket
  // keys rotate at this interval too. TLS 1.3 caps it at 7 days.
  std::chrono::milliseconds session_ticket_lifetime{std::chrono::hours(1)};
  friend bool operator==(const TlsConfig&, const TlsConfig&) = default;
};

// Multiplexing (docs/multiplexing.md): many TCP connections as HTTP/2 CONNECT streams over a few
// mTLS connections, the way Istio's HBONE carries them.
struct MultiplexConfig {
  // Client: carrying connections each data-path thread keeps to the server tunnel at most.
  std::size_t connections = 1;
  // Concurrent streams per carrying connection (SETTINGS_MAX_CONCURRENT_STREAMS both ways).
  std::size_t max_streams = 100;
  // Client: the CONNECT authority, i.e. the server tunnel's target as written there
  // ("host:port"); the server tunnel refuses any other.
  std::string authority;
  // Receive windows: per stream (what a slow reader may hold back) and per connection.
  std::size_t stream_window = 4 * 1024 * 1024;
  std::size_t connection_window = 16 * 1024 * 1024;
  friend bool operator==(const MultiplexConfig&, const MultiplexConfig&) = default;
};

struct TunnelConfig {
  std::string name;
  Mode mode = Mode::kServer;
  Endpoint listen;
  Endpoint target;
  UnixSocketOptions listen_socket;  // only for a unix: listen address
  std::string origin;  // where it was defined ("file:line:col" or "command line"), for messages

  // Which SVID to present (neither: the first the identity source holds).
  std::optional<spiffe::SpiffeId> svid_id;
  std::optional<std::string> svid_hint;

  // At least one rule, peers.any, or an OPA decision.
  PeerRules peers;
  std::optional<OpaConfig> opa;
  TlsConfig tls;

  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds idle_timeout{0};  // 0: never
  // Established sessions end this long after accept (reason max_connection_age); 0: never.
  // Unset in a draft: finalize() gives it the global Config::max_connection_age.
  std::optional<std::chrono::milliseconds> max_connection_age;
  std::size_t max_connections = 10000;  // established sessions
  // Handshakes in flight (accepted, not yet verified): over either limit a connection is closed
  // at once (reason handshake_limit). Unset in a draft: finalize() gives them the globals.
  std::optional<std::size_t> max_handshakes;
  std::optional<std::size_t> max_handshakes_per_source;  // per IPv4 address / IPv6 /64
  // Userspace copy buffer per active direction (idle sessions hold none), also the splice pipe
  // size. This is the product default; the tunnel module's own default only serves its tests.
  std::size_t buffer_size = 64 * 1024;
  // Server mode only: tell the target who connected (address, TLS facts, SPIFFE ID).
  ProxyProtocol proxy_protocol = ProxyProtocol::kOff;
  // The opened/closed line of each session (rejections are always logged). Unset in a draft:
  // finalize() gives it the global Config::log_sessions.
  std::optional<bool> log_sessions;
  // Set: this tunnel multiplexes (server: also accepts carrying connections; client: sends every
  // connection as a stream). Unset: dedicated connections only.
  std::optional<MultiplexConfig> multiplex;

  friend bool operator==(const TunnelConfig&, const TunnelConfig&) = default;
};

struct IdentityConfig {
  enum class Kind { kNone, kFiles, kWorkloadApi };
  Kind kind = Kind::kNone;
  // files
  std::string cert_file;
  std::string key_file;
  std::vector<std::pair<spiffe::TrustDomain, std::string>> bundle_files;
  // A key file with any group/other permission bit: refused (strict) or loaded with a warning.
  KeyPermissions key_permissions = KeyPermissions::kStrict;
  // workload API: "unix:///path" or "tcp://ip:port"; "" = SPIFFE_ENDPOINT_SOCKET
  std::string workload_api;
  friend bool operator==(const IdentityConfig&, const IdentityConfig&) = default;
};

struct Config {
  IdentityConfig identity;
  std::vector<TunnelConfig> tunnels;
  std::optional<Endpoint> admin;  // none: no admin endpoint
  LogLevel log_level = LogLevel::kInfo;
  LogFormat log_format = LogFormat::kText;
  bool log_sessions = true;  // default of every tunnel's log_sessions
  std::chrono::milliseconds max_connection_age{0};  // default of every tunnel's; 0: off
  std::size_t max_handshakes = 256;            // default of every tunnel's
  std::size_t max_handshakes_per_source = 32;  // default of every tunnel's
  std::size_t threads = 0;  // 0 = number of cores
  std::chrono::milliseconds drain_timeout{15000};
  // How long a data-path thread keeps polling its sockets after its last event before it sleeps
  // in epoll_wait; 0 = sleep at once (see docs/configuration.md, "Busy polling").
  std::chrono::microseconds busy_poll{0};
  // The file the configuration was read from; "" when it came from flags.
  std::string file;
  friend bool operator==(const Config&, const Config&) = default;
};

// Global command-line values that replace what a file (or the flag defaults) gave. Each is
// already parsed (config::read_global_flags); unset means "keep".
struct Overrides {
  std::optional<LogLevel> log_level;
  std::optional<LogFormat> log_format;
  std::optional<std::size_t> threads;
  std::optional<Endpoint> admin;
  std::optional<std::chrono::microseconds> busy_poll;
};

// Reads a YAML configuration file into a Config without the cross-field checks of validate().
// Every value is parsed and range-checked here; errors carry file:line:column.
base::Result<Config> read_config_file(const std::string& path);
// The same for YAML text; `origin` names it in messages.
base::Result<Config> read_config_text(const std::string& text, const std::string& origin);

// Checks the cross-field rules: an identity source and readable identity files, unique tunnel
// names and listen addresses, a peer rule per tunnel, one way to choose the SVID, TLS minimum
// not above the maximum, positive timeouts. Errors of a file's configuration name the file.
base::Status validate(const Config& config);

// Applies `overrides` to `draft`, then validate(): the one way to a Config the daemon runs.
base::Result<Config> finalize(Config draft, const Overrides& overrides);

// read_config_text/file followed by finalize() without overrides.
base::Result<Config> load_config_text(const std::string& text, const std::string& origin);
base::Result<Config> load_config_file(const std::string& path);

}  // namespace spiffe_tunnel::config
