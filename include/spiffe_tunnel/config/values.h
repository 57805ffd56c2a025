#pragma once
// Parsers for single configuration values, shared by the YAML reader and the flag reader so that
// both accept and refuse the same text with the same words, and every range is checked in one
// place. Errors describe the value only; the caller prefixes where it was written
// ("file:line:col: tunnel \"x\": " or "flag --y: ").

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::config {

// "host:port" / "[v6]:port" / ":port" (→ 127.0.0.1).
base::Result<HostPort> parse_host_port(std::string_view text);
// "unix:/path" or "unix:///path" (go-spiffe's spelling); the path must be absolute and fit a
// sockaddr_un. "unix://host/path" is refused.
inline constexpr std::size_t kMaxUnixPath = 107;
base::Result<UnixPath> parse_unix_path(std::string_view text);
// "systemd:NAME", NAME as in a socket unit's FileDescriptorName=.
base::Result<SystemdSocket> parse_systemd_socket(std::string_view text);
// A listen, target or admin address: the host:port forms above, unix:/path or systemd:NAME.
// Which kinds a place accepts is checked by validate().
base::Result<Endpoint> parse_endpoint(std::string_view text);
// Permission bits of a created unix socket, always octal as in chmod: "0660", "660", "0o660".
base::Result<uint32_t> parse_socket_mode(std::string_view text);
// A user or group by name (looked up now) or number.
base::Result<uint32_t> parse_user(std::string_view text);
base::Result<uint32_t> parse_group(std::string_view text);
// "http://host:port/v1/data/..."; https is not supported (OPA runs beside the daemon).
base::Result<OpaEndpoint> parse_opa_url(std::string_view url);

// "250ms", "10s", "5m", "1h", or a bare number of seconds; at most 8784h.
base::Result<std::chrono::milliseconds> parse_duration(std::string_view text);
// The shortest text parse_duration reads back as `d` ("10s", "250ms", "0").
std::string format_duration(std::chrono::milliseconds d);
// Busy-poll window: "0" or "off", "200us", "1ms"; at most kMaxBusyPoll.
inline constexpr std::chrono::microseconds kMaxBusyPoll{10'000};
base::Result<std::chrono::microseconds> parse_busy_poll(std::string_view text);

// Data-path threads: 0 (one per core) up to kMaxThreads.
inline constexpr std::size_t kMaxThreads = 1024;
base::Result<std::size_t> parse_threads(std::string_view text);
// Open sessions per tunnel: a positive number.
base::Result<std::size_t> parse_max_connections(std::string_view text);
// max_handshakes, max_handshakes_per_source: 1 to 1000000.
base::Result<std::size_t> parse_max_handshakes(std::string_view text);
// Userspace copy buffer: kMinBufferSize to kMaxBufferSize bytes.
inline constexpr std::size_t kMinBufferSize = 32 * 1024;
inline constexpr std::size_t kMaxBufferSize = 16 * 1024 * 1024;
base::Result<std::size_t> parse_buffer_size(std::string_view text);
// Records per TLS 1.3 traffic key: 2 (the KeyUpdate and one more) to kMaxKeyUpdateRecords (2^24, under RFC 8446's 2^24.5).
inline constexpr uint64_t kMaxKeyUpdateRecords = uint64_t{1} << 24;
base::Result<uint64_t> parse_key_update_records(std::string_view text);
// A duration from 1s to 7 days (RFC 8446 §4.6.1), for session_ticket_lifetime.
base::Result<std::chrono::milliseconds> parse_ticket_lifetime(std::string_view text);
// multiplex: a count in [1, 1000] (connections, max_streams), named by `what` in the error.
base::Result<std::size_t> parse_mux_count(std::string_view text, std::string_view what);
// multiplex: a window in bytes, 64 KiB to 1 GiB - 1 (HTTP/2's limit is 2^31 - 1).
base::Result<std::size_t> parse_mux_window(std::string_view text, std::string_view what);

// "auto", "on", "off".
base::Result<KtlsMode> parse_ktls(std::string_view text);
std::string_view ktls_name(KtlsMode mode);
// "1.2", "1.3".
base::Result<TlsVersion> parse_tls_version(std::string_view text);
std::string_view tls_version_name(TlsVersion version);
// "off", "v2".
base::Result<ProxyProtocol> parse_proxy_protocol(std::string_view text);
std::string_view proxy_protocol_name(ProxyProtocol value);
// trace, debug, info, warn (warning), error (err), critical, off.
base::Result<LogLevel> parse_log_level(std::string_view text);
std::string_view log_level_name(LogLevel level);
// "text", "json".
base::Result<LogFormat> parse_log_format(std::string_view text);
std::string_view log_format_name(LogFormat format);
// "strict", "warn".
base::Result<KeyPermissions> parse_key_permissions(std::string_view text);
std::string_view key_permissions_name(KeyPermissions value);

// One written value and the words that say where it was written, as an error prefix:
// "spiffe-tunnel.yaml:14:9: tunnel \"kafka-in\" allow.ids" or "flag --allow-id".
struct Sourced {
  std::string text;
  std::string where;
};

// The peer rules as written, before parsing: one list per kind of rule.
struct PeerRuleText {
  std::vector<Sourced> ids;
  std::vector<Sourced> trust_domains;
  std::vector<Sourced> patterns;
  bool any = false;
};

// Parses every entry; the first bad one fails as "<where>: <why>".
base::Result<PeerRules> parse_peer_rules(const PeerRuleText& text);

}  // namespace spiffe_tunnel::config
