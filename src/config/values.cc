#include "spiffe_tunnel/config/values.h"

#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>
#include <vector>

namespace spiffe_tunnel::config {
namespace {

using base::make_error;
using base::Result;

// Durations above this are typos; it also keeps every timeout far from overflowing the
// nanosecond clocks that timers use.
constexpr std::chrono::hours kMaxDuration{24 * 366};

constexpr std::string_view kUnixScheme = "unix:";
constexpr std::string_view kSystemdScheme = "systemd:";

std::string quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }

// A number written with digits only (no sign, no spaces), if it fits in 64 bits.
std::optional<uint64_t> digits_value(std::string_view text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return std::nullopt;
  }
  return v;
}

bool is_negative_number(std::string_view text) {
  return text.size() > 1 && text.front() == '-' && digits_value(text.substr(1)).has_value();
}

// Each kind of peer rule parses its entries the same way; the first bad one fails.
template <typename T>
base::Status parse_each(const std::vector<Sourced>& entries, std::vector<T>& out) {
  for (const auto& e : entries) {
    auto v = T::parse(e.text);
    if (!v) {
      return v.error().wrap(e.where);
    }
    out.push_back(std::move(*v));
  }
  return {};
}

// A user or group: a number, or a name looked up now with getpwnam_r / getgrnam_r.
template <typename Entry, typename Lookup, typename Id>
Result<uint32_t> id_of(std::string_view text, const char* what, Lookup lookup, Id Entry::*id) {
  if (auto n = digits_value(text); n && *n < UINT32_MAX) {
    return static_cast<uint32_t>(*n);
  }
  const std::string name(text);
  std::vector<char> buf(16384);
  Entry entry{};
  Entry* found = nullptr;
  const int err = lookup(name.c_str(), &entry, buf.data(), buf.size(), &found);
  if (err != 0 || found == nullptr) {
    return make_error(std::string("no ") + what + " " + quoted(text) + " on this system" +
                      (err != 0 ? std::string(": ") + std::strerror(err) : ""));
  }
  return static_cast<uint32_t>(found->*id);
}

}  // namespace

std::string HostPort::str() const {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

std::string Endpoint::str() const {
  return std::visit([](const auto& a) { return a.str(); }, address);
}

Result<HostPort> parse_host_port(std::string_view text) {
  const std::string q = quoted(text);
  HostPort hp;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return make_error(q + " is not [IPv6]:port");
    }
    hp.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return make_error(q + " has no port (expected host:port)");
    }
    hp.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    if (hp.host.find(':') != std::string::npos) {
      return make_error(q + ": write IPv6 addresses as [addr]:port");
    }
  }
  if (hp.host.empty()) {
    hp.host = "127.0.0.1";
  }
  const auto p = port.size() <= 5 ? digits_value(port) : std::nullopt;
  if (!p) {
    return make_error(q + ": port \"" + std::string(port) + "\" is not a number");
  }
  if (*p > 65535) {
    return make_error(q + ": port " + std::string(port) + " is out of range");
  }
  hp.port = static_cast<uint16_t>(*p);
  return hp;
}

Result<UnixPath> parse_unix_path(std::string_view text) {
  const std::string q = quoted(text);
  std::string_view path = text.substr(kUnixScheme.size());
  if (path.substr(0, 2) == "//") {
    // go-spiffe's form: an empty authority, then the absolute path.
    path.remove_prefix(2);
    if (!path.empty() && path.front() != '/') {
      return make_error(q + " names a host; a unix socket is a local path: write unix:/path or "
                            "unix:///path");
    }
  }
  if (path.empty()) {
    return make_error(q + " has no path (expected unix:/path)");
  }
  if (path.front() != '/') {
    return make_error(q + ": the socket path must be absolute (unix:/path)");
  }
  if (path.find('\0') != std::string_view::npos) {
    return make_error(q + ": the socket path contains a NUL byte");
  }
  if (path.size() > kMaxUnixPath) {
    return make_error(q + ": the socket path is longer than " + std::to_string(kMaxUnixPath) +
                      " bytes, the kernel's limit for unix sockets");
  }
  return UnixPath{std::string(path)};
}

Result<SystemdSocket> parse_systemd_socket(std::string_view text) {
  const std::string_view name = text.substr(kSystemdScheme.size());
  // systemd's own rules for FileDescriptorName=: 1-255 printable ASCII characters, no ':'.
  const bool printable = std::all_of(name.begin(), name.end(),
                                     [](char c) { return c > ' ' && c < 127 && c != ':'; });
  if (name.empty() || name.size() > 255 || !printable) {
    return make_error(quoted(text) + ": expected systemd:NAME, NAME being the socket unit's "
                                     "FileDescriptorName= (1-255 printable characters, no ':')");
  }
  return SystemdSocket{std::string(name)};
}

Result<Endpoint> parse_endpoint(std::string_view text) {
  if (text.substr(0, kUnixScheme.size()) == kUnixScheme) {
    auto u = parse_unix_path(text);
    if (!u) {
      return u.error();
    }
    return Endpoint{std::move(*u)};
  }
  if (text.substr(0, kSystemdScheme.size()) == kSystemdScheme) {
    auto s = parse_systemd_socket(text);
    if (!s) {
      return s.error();
    }
    return Endpoint{std::move(*s)};
  }
  auto hp = parse_host_port(text);
  if (!hp) {
    return hp.error();
  }
  return Endpoint{std::move(*hp)};
}

Result<uint32_t> parse_socket_mode(std::string_view text) {
  std::string_view digits = text;
  if (digits.substr(0, 2) == "0o") {
    digits.remove_prefix(2);
  }
  uint32_t mode = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), mode, 8);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() ||
      digits.front() == '+' || digits.front() == '-') {
    return make_error(quoted(text) + " is not an octal file mode (examples: \"0660\", \"0600\")");
  }
  if (mode > 0777) {
    return make_error(quoted(text) + ": only permission bits (at most 0777) apply to a socket");
  }
  return mode;
}

Result<uint32_t> parse_user(std::string_view text) {
  return id_of<passwd>(text, "user", ::getpwnam_r, &passwd::pw_uid);
}

Result<uint32_t> parse_group(std::string_view text) {
  return id_of<group>(text, "group", ::getgrnam_r, &group::gr_gid);
}

Result<OpaEndpoint> parse_opa_url(std::string_view url) {
  const std::string q = "OPA URL " + quoted(url);
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return make_error(q + " must start with http:// (OPA runs beside the daemon)");
  }
  const size_t slash = url.find('/', kScheme.size());
  const std::string_view authority = url.substr(kScheme.size(), slash - kScheme.size());
  OpaEndpoint e;
  e.path = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  const size_t colon = authority.rfind(':');
  if (authority.empty() || colon == std::string_view::npos || colon + 1 == authority.size()) {
    return make_error(q + " needs host:port");
  }
  std::string_view host = authority.substr(0, colon);
  const std::string_view port = authority.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find_first_of("[]:") != std::string_view::npos) {
    return make_error(q + ": write IPv6 addresses as [addr]:port");
  }
  e.host = std::string(host);
  const auto p = digits_value(port);
  if (!p) {
    return make_error(q + ": port \"" + std::string(port) + "\" is not a number");
  }
  if (*p > 65535) {
    return make_error(q + ": port " + std::string(port) + " is out of range");
  }
  e.port = static_cast<uint16_t>(*p);
  if (e.path.rfind("/v1/data", 0) != 0) {
    return make_error(q + ": the path must be a data API path (/v1/data/<package>/<rule>)");
  }
  return e;
}

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  const std::string q = quoted(text);
  const size_t digits = std::min(text.find_first_not_of("0123456789"), text.size());
  if (digits == 0 || digits > 12) {
    return make_error(q + " is not a duration (examples: 500ms, 10s, 5m, 1h)");
  }
  // At most 12 digits, so even hours fit in 64 bits before the range check.
  const auto n = static_cast<int64_t>(*digits_value(text.substr(0, digits)));
  const std::string_view unit = text.substr(digits);
  using std::chrono::milliseconds;
  milliseconds d;
  if (unit == "ms") {
    d = milliseconds(n);
  } else if (unit == "s" || unit.empty()) {
    d = milliseconds(n * 1000);
  } else if (unit == "m") {
    d = milliseconds(n * 60'000);
  } else if (unit == "h") {
    d = milliseconds(n * 3'600'000);
  } else {
    return make_error(q + " has unknown unit \"" + std::string(unit) + "\" (use ms, s, m or h)");
  }
  if (d > kMaxDuration) {
    return make_error(q + " is longer than " + std::to_string(kMaxDuration.count()) + "h");
  }
  return d;
}

std::string format_duration(std::chrono::milliseconds d) {
  const int64_t ms = d.count();
  if (ms == 0) {
    return "0";
  }
  for (auto [unit, size] : {std::pair{"h", 3'600'000}, std::pair{"m", 60'000},
                            std::pair{"s", 1000}}) {
    if (ms % size == 0) {
      return std::to_string(ms / size) + unit;
    }
  }
  return std::to_string(ms) + "ms";
}

Result<std::chrono::microseconds> parse_busy_poll(std::string_view text) {
  using std::chrono::microseconds;
  const std::string q = quoted(text);
  if (text == "0" || text == "off") {
    return microseconds(0);
  }
  const size_t digits = std::min(text.find_first_not_of("0123456789"), text.size());
  const std::string_view unit = text.substr(digits);
  if (digits == 0 || digits > 9 || (unit != "us" && unit != "ms")) {
    return make_error(q + " is not a busy-poll window (examples: 0, 50us, 200us, 1ms)");
  }
  const auto n = static_cast<int64_t>(*digits_value(text.substr(0, digits)));
  const microseconds d = unit == "ms" ? microseconds(n * 1000) : microseconds(n);
  if (d > kMaxBusyPoll) {
    return make_error(q + " is longer than " + std::to_string(kMaxBusyPoll.count() / 1000) +
                      "ms: a longer window only burns CPU");
  }
  return d;
}

Result<std::size_t> parse_threads(std::string_view text) {
  const auto n = digits_value(text);
  if (!n) {
    return make_error("threads must be a number");
  }
  if (*n > kMaxThreads) {
    return make_error("threads must be at most " + std::to_string(kMaxThreads) +
                      " (0: one per core)");
  }
  return static_cast<std::size_t>(*n);
}

Result<std::size_t> parse_max_connections(std::string_view text) {
  const auto n = digits_value(text);
  if (is_negative_number(text) || (n && *n == 0)) {
    return make_error("max_connections must be positive");
  }
  if (!n || *n > static_cast<uint64_t>(INT64_MAX)) {
    return make_error("max_connections must be a number");
  }
  return static_cast<std::size_t>(*n);
}

Result<std::size_t> parse_max_handshakes(std::string_view text) {
  const auto n = digits_value(text);
  if (is_negative_number(text) || (n && *n == 0)) {
    return make_error("must be positive");
  }
  if (!n || *n > 1000000) {
    return make_error("must be a number up to 1000000");
  }
  return static_cast<std::size_t>(*n);
}

Result<std::size_t> parse_mux_count(std::string_view text, std::string_view what) {
  const auto n = digits_value(text);
  if (!n || *n < 1 || *n > 1000) {
    return make_error(std::string(what) + " must be a number from 1 to 1000");
  }
  return static_cast<std::size_t>(*n);
}

Result<std::size_t> parse_mux_window(std::string_view text, std::string_view what) {
  const auto n = digits_value(text);
  constexpr uint64_t kMin = 64 * 1024, kMax = (1u << 30) - 1;
  if (!n || *n < kMin || *n > kMax) {
    return make_error(std::string(what) + " must be a number of bytes from " +
                      std::to_string(kMin) + " to " + std::to_string(kMax));
  }
  return static_cast<std::size_t>(*n);
}

Result<std::size_t> parse_buffer_size(std::string_view text) {
  const auto n = digits_value(text);
  if (!n && !is_negative_number(text)) {
    return make_error("buffer_size must be a number of bytes");
  }
  if (!n || *n < kMinBufferSize || *n > kMaxBufferSize) {
    return make_error("buffer_size must be between " + std::to_string(kMinBufferSize) + " and " +
                      std::to_string(kMaxBufferSize));
  }
  return static_cast<std::size_t>(*n);
}

Result<uint64_t> parse_key_update_records(std::string_view text) {
  const auto n = digits_value(text);
  if (!n || *n < 2 || *n > kMaxKeyUpdateRecords) {
    return make_error("key_update_records must be a number of records from 2 to " +
                      std::to_string(kMaxKeyUpdateRecords) +
                      " (2^24; RFC 8446 §5.5 allows AES-GCM about 2^24.5)");
  }
  return *n;
}

Result<std::chrono::milliseconds> parse_ticket_lifetime(std::string_view text) {
  auto d = parse_duration(text);
  if (!d) {
    return d.error();
  }
  if (*d < std::chrono::seconds(1) || *d > std::chrono::hours(24 * 7)) {
    return make_error("session_ticket_lifetime must be from 1s to 168h (7 days, the most TLS 1.3 "
                      "allows)");
  }
  return *d;
}

Result<KtlsMode> parse_ktls(std::string_view text) {
  for (auto m : {KtlsMode::kAuto, KtlsMode::kOn, KtlsMode::kOff}) {
    if (text == ktls_name(m)) {
      return m;
    }
  }
  return make_error("ktls " + quoted(text) + " is not auto, on or off");
}

std::string_view ktls_name(KtlsMode mode) {
  switch (mode) {
    case KtlsMode::kOn:
      return "on";
    case KtlsMode::kOff:
      return "off";
    case KtlsMode::kAuto:
      break;
  }
  return "auto";
}

Result<ProxyProtocol> parse_proxy_protocol(std::string_view text) {
  for (auto v : {ProxyProtocol::kOff, ProxyProtocol::kV2}) {
    if (text == proxy_protocol_name(v)) {
      return v;
    }
  }
  return make_error("proxy_protocol " + quoted(text) + " is not off or v2");
}

std::string_view proxy_protocol_name(ProxyProtocol value) {
  return value == ProxyProtocol::kV2 ? "v2" : "off";
}

Result<TlsVersion> parse_tls_version(std::string_view text) {
  for (auto v : {TlsVersion::k1_2, TlsVersion::k1_3}) {
    if (text == tls_version_name(v)) {
      return v;
    }
  }
  return make_error("TLS version " + quoted(text) + " is not 1.2 or 1.3");
}

std::string_view tls_version_name(TlsVersion version) {
  return version == TlsVersion::k1_2 ? "1.2" : "1.3";
}

Result<LogLevel> parse_log_level(std::string_view text) {
  for (auto l : {LogLevel::kTrace, LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn,
                 LogLevel::kError, LogLevel::kCritical, LogLevel::kOff}) {
    if (text == log_level_name(l)) {
      return l;
    }
  }
  // The longer spellings spdlog also reads.
  if (text == "warning") {
    return LogLevel::kWarn;
  }
  if (text == "err") {
    return LogLevel::kError;
  }
  return make_error(quoted(text) + " is not a log level");
}

std::string_view log_level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kTrace:
      return "trace";
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
    case LogLevel::kCritical:
      return "critical";
    case LogLevel::kOff:
      break;
  }
  return "off";
}

Result<LogFormat> parse_log_format(std::string_view text) {
  for (auto f : {LogFormat::kText, LogFormat::kJson}) {
    if (text == log_format_name(f)) {
      return f;
    }
  }
  return make_error(quoted(text) + " is not a log format (text or json)");
}

std::string_view log_format_name(LogFormat format) {
  return format == LogFormat::kJson ? "json" : "text";
}

Result<KeyPermissions> parse_key_permissions(std::string_view text) {
  for (auto k : {KeyPermissions::kStrict, KeyPermissions::kWarn}) {
    if (text == key_permissions_name(k)) {
      return k;
    }
  }
  return make_error(quoted(text) + " is not a key permission check (strict or warn)");
}

std::string_view key_permissions_name(KeyPermissions value) {
  return value == KeyPermissions::kWarn ? "warn" : "strict";
}

Result<PeerRules> parse_peer_rules(const PeerRuleText& text) {
  PeerRules rules;
  rules.any = text.any;
  for (auto st : {parse_each(text.ids, rules.ids),
                  parse_each(text.trust_domains, rules.trust_domains),
                  parse_each(text.patterns, rules.patterns)}) {
    if (!st) {
      return st.error();
    }
  }
  return rules;
}

}  // namespace spiffe_tunnel::config
