#include "spiffe_tunnel/config/config.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <unistd.h>

#include "spiffe_tunnel/policy/authorizer.h"
#include "spiffe_tunnel/policy/opa_client.h"

namespace spiffe_tunnel::config {
namespace {

using base::Error;
using base::make_error;
using base::Result;

// An upper bound for threads: far above any core count, and low enough that a typo cannot ask
// for millions of threads.
constexpr std::size_t kMaxThreads = 1024;
// Durations above this are typos; it also keeps every timeout far from overflowing the
// nanosecond clocks that timers use.
constexpr std::chrono::hours kMaxDuration{24 * 366};

// Carries the file name so that every error can say file:line:column.
struct Reader {
  std::string origin;

  std::string where(const YAML::Node& n) const {
    const YAML::Mark m = n.Mark();
    if (m.is_null()) {
      return origin;
    }
    return origin + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
  }
  Error fail(const YAML::Node& n, const std::string& what) const {
    return make_error(where(n) + ": " + what);
  }

  Result<std::string> scalar(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) {
      return fail(n, "\"" + key + "\" must be a single value");
    }
    return n.Scalar();
  }

  // A list entry and where it was written, so that an error points at the entry itself.
  struct Entry {
    std::string value;
    YAML::Node node;
  };

  Result<std::vector<Entry>> list(const YAML::Node& n, const std::string& key) const {
    std::vector<Entry> out;
    if (n.IsScalar()) {
      out.push_back({n.Scalar(), n});
      return out;
    }
    if (!n.IsSequence()) {
      return fail(n, "\"" + key + "\" must be a list");
    }
    for (const auto& item : n) {
      if (!item.IsScalar()) {
        return fail(item, "entries of \"" + key + "\" must be single values");
      }
      out.push_back({item.Scalar(), item});
    }
    return out;
  }

  // An optional single value: leaves `out` alone when the key is absent.
  base::Status optional_scalar(const YAML::Node& n, const std::string& key,
                               std::string& out) const {
    if (!n) {
      return {};
    }
    auto v = scalar(n, key);
    if (!v) {
      return v.error();
    }
    out = *v;
    return {};
  }

  // A file that must be readable now; the error points at where it was named.
  base::Status readable_file(const YAML::Node& n, const std::string& what,
                             const std::string& path) const {
    if (::access(path.c_str(), R_OK) != 0) {
      return fail(n, what + " " + path + ": " + std::strerror(errno));
    }
    return {};
  }

  base::Status only_keys(const YAML::Node& map, std::initializer_list<std::string_view> allowed,
                         const std::string& section) const {
    if (!map.IsMap()) {
      return fail(map, "\"" + section + "\" must be a mapping");
    }
    for (const auto& kv : map) {
      const std::string key = kv.first.Scalar();
      bool known = false;
      std::string list;
      for (auto a : allowed) {
        known = known || key == a;
        list += (list.empty() ? "" : ", ") + std::string(a);
      }
      if (!known) {
        return fail(kv.first, "unknown key \"" + key + "\" in " + section + " (expected one of: " +
                                  list + ")");
      }
    }
    return {};
  }
};

base::Status read_duration(const Reader& r, const YAML::Node& n, const std::string& key,
                           std::chrono::milliseconds& out) {
  if (!n) {
    return {};
  }
  auto s = r.scalar(n, key);
  if (!s) {
    return s.error();
  }
  auto d = parse_duration(*s);
  if (!d) {
    return r.fail(n, key + ": " + d.error().message);
  }
  out = *d;
  return {};
}

#define ST_TRY(expr)           \
  do {                         \
    auto _st = (expr);         \
    if (!_st) {                \
      return _st.error();      \
    }                          \
  } while (0)

base::Status read_peers(const Reader& r, const YAML::Node& n, const std::string& section,
                        TunnelConfig& t) {
  ST_TRY(r.only_keys(n, {"ids", "trust_domains", "patterns", "any"}, section));
  if (n["ids"]) {
    auto ids = r.list(n["ids"], "ids");
    if (!ids) {
      return ids.error();
    }
    for (const auto& [s, node] : *ids) {
      auto id = spiffe::SpiffeId::parse(s);
      if (!id) {
        return r.fail(node, section + ".ids: " + id.error().message);
      }
      t.peer_ids.push_back(*id);
    }
  }
  if (n["trust_domains"]) {
    auto tds = r.list(n["trust_domains"], "trust_domains");
    if (!tds) {
      return tds.error();
    }
    for (const auto& [s, node] : *tds) {
      auto td = spiffe::TrustDomain::parse(s);
      if (!td) {
        return r.fail(node, section + ".trust_domains: " + td.error().message);
      }
      t.peer_trust_domains.push_back(*td);
    }
  }
  if (n["patterns"]) {
    auto ps = r.list(n["patterns"], "patterns");
    if (!ps) {
      return ps.error();
    }
    for (const auto& [s, node] : *ps) {
      auto p = policy::IdPattern::parse(s);
      if (!p) {
        return r.fail(node, section + ".patterns: " + p.error().message);
      }
      t.peer_patterns.push_back(s);
    }
  }
  if (const auto any = n["any"]) {
    bool v = false;
    if (!any.IsScalar() || !YAML::convert<bool>::decode(any, v)) {
      return r.fail(any, section + ".any must be true or false");
    }
    t.allow_any_peer = v;
  }
  return {};
}

Result<TunnelConfig> read_tunnel(const Reader& r, const YAML::Node& n, size_t index) {
  TunnelConfig t;
  t.origin = r.where(n);
  ST_TRY(r.only_keys(n,
                     {"name", "mode", "listen", "target", "svid", "allow", "expect", "opa", "tls",
                      "timeouts", "max_connections", "buffer_size"},
                     "tunnel #" + std::to_string(index + 1)));
  t.name = "tunnel-" + std::to_string(index + 1);
  ST_TRY(r.optional_scalar(n["name"], "name", t.name));
  const std::string ctx = "tunnel \"" + t.name + "\"";
  auto need = [&](const char* key) -> Result<std::string> {
    if (!n[key]) {
      return r.fail(n, ctx + ": \"" + key + "\" is required");
    }
    return r.scalar(n[key], key);
  };
  auto mode = need("mode");
  if (!mode) {
    return mode.error();
  }
  if (*mode == "server") {
    t.mode = Mode::kServer;
  } else if (*mode == "client") {
    t.mode = Mode::kClient;
  } else {
    return r.fail(n["mode"], ctx + ": mode \"" + *mode + "\" is neither \"server\" nor \"client\"");
  }
  for (auto [key, out] : {std::pair{"listen", &t.listen}, std::pair{"target", &t.target}}) {
    auto v = need(key);
    if (!v) {
      return v.error();
    }
    auto hp = parse_host_port(*v);
    if (!hp) {
      return r.fail(n[key], ctx + ": " + key + ": " + hp.error().message);
    }
    *out = *hp;
  }
  if (const auto s = n["svid"]) {
    ST_TRY(r.only_keys(s, {"id", "hint"}, ctx + " svid"));
    if (s["id"]) {
      std::string text;
      ST_TRY(r.optional_scalar(s["id"], "id", text));
      auto id = spiffe::SpiffeId::parse(text);
      if (!id) {
        return r.fail(s["id"], ctx + ": svid.id: " + id.error().message);
      }
      t.svid_id = *id;
    }
    if (s["hint"]) {
      std::string hint;
      ST_TRY(r.optional_scalar(s["hint"], "hint", hint));
      t.svid_hint = hint;
    }
  }
  const char* peers_key = t.mode == Mode::kServer ? "allow" : "expect";
  const char* other_key = t.mode == Mode::kServer ? "expect" : "allow";
  if (n[other_key]) {
    return r.fail(n[other_key], ctx + ": a " + *mode + " tunnel lists its peers under \"" +
                                    peers_key + "\", not \"" + other_key + "\"");
  }
  if (n[peers_key]) {
    ST_TRY(read_peers(r, n[peers_key], ctx + " " + peers_key, t));
  }
  if (const auto tl = n["tls"]) {
    ST_TRY(r.only_keys(tl, {"min_version", "max_version", "cipher_suites", "ciphers", "ktls", "server_name"},
                       ctx + " tls"));
    ST_TRY(r.optional_scalar(tl["min_version"], "min_version", t.tls_min_version));
    ST_TRY(r.optional_scalar(tl["max_version"], "max_version", t.tls_max_version));
    ST_TRY(r.optional_scalar(tl["cipher_suites"], "cipher_suites", t.tls13_ciphersuites));
    ST_TRY(r.optional_scalar(tl["ciphers"], "ciphers", t.tls12_ciphers));
    ST_TRY(r.optional_scalar(tl["ktls"], "ktls", t.ktls));
    ST_TRY(r.optional_scalar(tl["server_name"], "server_name", t.server_name));
  }
  if (const auto o = n["opa"]) {
    ST_TRY(r.only_keys(o, {"url", "timeout", "cache"}, ctx + " opa"));
    ST_TRY(r.optional_scalar(o["url"], "url", t.opa_url));
    if (t.opa_url.empty()) {
      return r.fail(o, ctx + ": opa.url is required");
    }
    ST_TRY(read_duration(r, o["timeout"], "timeout", t.opa_timeout));
    ST_TRY(read_duration(r, o["cache"], "cache", t.opa_cache_ttl));
  }
  if (const auto to = n["timeouts"]) {
    ST_TRY(r.only_keys(to, {"handshake", "connect", "idle"}, ctx + " timeouts"));
    ST_TRY(read_duration(r, to["handshake"], "handshake", t.handshake_timeout));
    ST_TRY(read_duration(r, to["connect"], "connect", t.connect_timeout));
    ST_TRY(read_duration(r, to["idle"], "idle", t.idle_timeout));
  }
  if (n["max_connections"]) {
    try {
      const long v = n["max_connections"].as<long>();
      if (v <= 0) {
        return r.fail(n["max_connections"], ctx + ": max_connections must be positive");
      }
      t.max_connections = static_cast<size_t>(v);
    } catch (const YAML::Exception&) {
      return r.fail(n["max_connections"], ctx + ": max_connections must be a number");
    }
  }
  if (n["buffer_size"]) {
    try {
      const long v = n["buffer_size"].as<long>();
      if (v < 32 * 1024 || v > 16 * 1024 * 1024) {
        return r.fail(n["buffer_size"], ctx + ": buffer_size must be between 32768 and 16777216");
      }
      t.buffer_size = static_cast<size_t>(v);
    } catch (const YAML::Exception&) {
      return r.fail(n["buffer_size"], ctx + ": buffer_size must be a number of bytes");
    }
  }
  return t;
}

Result<Config> read_config(const Reader& r, const YAML::Node& root) {
  Config c;
  if (!root || root.IsNull()) {
    return make_error(r.origin + ": the file is empty");
  }
  ST_TRY(r.only_keys(root,
                     {"identity", "tunnels", "admin", "log_level", "threads", "drain_timeout",
                      "busy_poll"},
                     "the top level"));
  if (const auto id = root["identity"]) {
    ST_TRY(r.only_keys(id, {"workload_api", "files"}, "identity"));
    if (id["workload_api"] && id["files"]) {
      return r.fail(id, "identity: choose either workload_api or files, not both");
    }
    if (id["workload_api"]) {
      c.identity.kind = IdentityConfig::Kind::kWorkloadApi;
      if (!id["workload_api"].IsNull()) {
        ST_TRY(r.optional_scalar(id["workload_api"], "workload_api", c.identity.workload_api));
      }
    }
    if (const auto f = id["files"]) {
      ST_TRY(r.only_keys(f, {"cert", "key", "bundles"}, "identity.files"));
      c.identity.kind = IdentityConfig::Kind::kFiles;
      if (!f["cert"] || !f["key"] || !f["bundles"]) {
        return r.fail(f, "identity.files needs cert, key and bundles");
      }
      ST_TRY(r.optional_scalar(f["cert"], "cert", c.identity.cert_file));
      ST_TRY(r.readable_file(f["cert"], "certificate file", c.identity.cert_file));
      ST_TRY(r.optional_scalar(f["key"], "key", c.identity.key_file));
      ST_TRY(r.readable_file(f["key"], "private key file", c.identity.key_file));
      if (!f["bundles"].IsMap()) {
        return r.fail(f["bundles"], "identity.files.bundles must map trust domain → file");
      }
      if (f["bundles"].size() == 0) {
        return r.fail(f["bundles"], "identity.files.bundles is empty: add the bundle file of each "
                                    "trust domain whose peers you accept");
      }
      for (const auto& kv : f["bundles"]) {
        auto td = spiffe::TrustDomain::parse(kv.first.Scalar());
        if (!td) {
          return r.fail(kv.first, "identity.files.bundles: " + td.error().message);
        }
        std::string path;
        ST_TRY(r.optional_scalar(kv.second, "bundles", path));
        ST_TRY(r.readable_file(kv.second, "bundle file", path));
        c.identity.bundle_files.emplace_back(*td, path);
      }
    }
  }
  if (!root["identity"]) {
    return r.fail(root, "no identity source: add identity.files or identity.workload_api");
  }
  if (const auto a = root["admin"]) {
    ST_TRY(r.only_keys(a, {"listen"}, "admin"));
    ST_TRY(r.optional_scalar(a["listen"], "listen", c.admin_listen));
  }
  ST_TRY(r.optional_scalar(root["log_level"], "log_level", c.log_level));
  if (root["threads"]) {
    try {
      c.threads = root["threads"].as<size_t>();
    } catch (const YAML::Exception&) {
      return r.fail(root["threads"], "threads must be a number");
    }
    if (c.threads > kMaxThreads) {
      return r.fail(root["threads"], "threads must be at most " + std::to_string(kMaxThreads) +
                                         " (0: one per core)");
    }
  }
  ST_TRY(read_duration(r, root["drain_timeout"], "drain_timeout", c.drain_timeout));
  if (root["busy_poll"]) {
    std::string text;
    ST_TRY(r.optional_scalar(root["busy_poll"], "busy_poll", text));
    auto d = parse_busy_poll(text);
    if (!d) {
      return r.fail(root["busy_poll"], "busy_poll: " + d.error().message);
    }
    c.busy_poll = *d;
  }
  const auto tunnels = root["tunnels"];
  if (!tunnels || !tunnels.IsSequence() || tunnels.size() == 0) {
    return r.fail(tunnels ? tunnels : root, "\"tunnels\" must be a non-empty list");
  }
  for (size_t i = 0; i < tunnels.size(); ++i) {
    auto t = read_tunnel(r, tunnels[i], i);
    if (!t) {
      return t.error();
    }
    c.tunnels.push_back(std::move(*t));
  }
  return c;
}

bool readable(const std::string& path) { return ::access(path.c_str(), R_OK) == 0; }

// Where a yaml-cpp exception happened, when it knows.
std::string where_in(const std::string& origin, const YAML::Mark& m) {
  if (m.is_null()) {
    return origin;
  }
  return origin + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}

}  // namespace

std::string HostPort::str() const {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

Result<HostPort> parse_host_port(std::string_view text) {
  const std::string q = "\"" + std::string(text) + "\"";
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
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos) {
    return make_error(q + ": port \"" + std::string(port) + "\" is not a number");
  }
  const int p = std::stoi(std::string(port));
  if (p > 65535) {
    return make_error(q + ": port " + std::string(port) + " is out of range");
  }
  hp.port = static_cast<uint16_t>(p);
  return hp;
}

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  const std::string q = "\"" + std::string(text) + "\"";
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    ++i;
  }
  if (i == 0 || i > 12) {
    return make_error(q + " is not a duration (examples: 500ms, 10s, 5m, 1h)");
  }
  const long long n = std::stoll(std::string(text.substr(0, i)));
  const std::string_view unit = text.substr(i);
  using namespace std::chrono;
  milliseconds d;
  // At most 12 digits, so even hours fit in 64 bits before the range check.
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

Result<std::chrono::microseconds> parse_busy_poll(std::string_view text) {
  using namespace std::chrono;
  const std::string q = "\"" + std::string(text) + "\"";
  if (text == "0" || text == "off") {
    return microseconds(0);
  }
  size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    ++i;
  }
  const std::string_view unit = text.substr(i);
  if (i == 0 || i > 9 || (unit != "us" && unit != "ms")) {
    return make_error(q + " is not a busy-poll window (examples: 0, 50us, 200us, 1ms)");
  }
  const long long n = std::stoll(std::string(text.substr(0, i)));
  const microseconds d = unit == "ms" ? microseconds(n * 1000) : microseconds(n);
  if (d > kMaxBusyPoll) {
    return make_error(q + " is longer than " + std::to_string(kMaxBusyPoll.count() / 1000) +
                      "ms: a longer window only burns CPU");
  }
  return d;
}

Result<Config> load_config_text(const std::string& text, const std::string& origin) {
  Reader r{origin};
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return make_error(where_in(origin, e.mark) + ": YAML syntax error: " + e.msg);
  }
  Result<Config> c = Error{};
  try {
    c = read_config(r, root);
  } catch (const YAML::Exception& e) {
    // Type mismatches deep in yaml-cpp (e.g. a list where a value belongs).
    return make_error(where_in(origin, e.mark) + ": " + e.msg);
  }
  if (!c) {
    return c;
  }
  auto st = validate(*c);
  if (!st) {
    // Tunnel errors carry the tunnel's file:line:col already; name at least the file otherwise.
    const std::string& msg = st.error().message;
    return msg.rfind(origin + ":", 0) == 0 ? st.error() : st.error().wrap(origin);
  }
  return c;
}

Result<Config> load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return make_error("cannot read config file " + path + ": " + std::strerror(errno));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return load_config_text(ss.str(), path);
}

base::Status validate(const Config& c) {
  using K = IdentityConfig::Kind;
  if (c.identity.kind == K::kNone) {
    return make_error(
        "no identity source: give --cert/--key/--bundle files or --workload-api (in a config "
        "file: identity.files or identity.workload_api)");
  }
  if (c.identity.kind == K::kFiles) {
    for (const auto& [what, path] : {std::pair{"certificate", c.identity.cert_file},
                                     std::pair{"private key", c.identity.key_file}}) {
      if (path.empty()) {
        return make_error(std::string("no ") + what + " file given");
      }
      if (!readable(path)) {
        return make_error(std::string(what) + " file " + path + ": " + std::strerror(errno));
      }
    }
    if (c.identity.bundle_files.empty()) {
      return make_error("no trust bundle given: add --bundle TRUST_DOMAIN=FILE for each trust "
                        "domain whose peers you accept");
    }
    for (const auto& [td, path] : c.identity.bundle_files) {
      if (!readable(path)) {
        return make_error("bundle file " + path + " for trust domain " + td.name() + ": " +
                          std::strerror(errno));
      }
    }
  }
  if (c.threads > kMaxThreads) {
    return make_error("threads must be at most " + std::to_string(kMaxThreads) +
                      " (0: one per core)");
  }
  if (c.busy_poll < std::chrono::microseconds(0) || c.busy_poll > kMaxBusyPoll) {
    return make_error("busy_poll must be between 0 and " +
                      std::to_string(kMaxBusyPoll.count() / 1000) + "ms");
  }
  if (c.tunnels.empty()) {
    return make_error("no tunnel configured");
  }
  std::set<std::string> names;
  std::set<std::string> listens;
  for (const auto& t : c.tunnels) {
    const std::string ctx = (t.origin.empty() ? "" : t.origin + ": ") + "tunnel \"" + t.name + "\"";
    if (!names.insert(t.name).second) {
      return make_error(ctx + ": the name is used by another tunnel");
    }
    if (t.listen.port != 0 && !listens.insert(t.listen.str()).second) {
      return make_error(ctx + ": listen address " + t.listen.str() + " is used by another tunnel");
    }
    if (!t.opa_url.empty()) {
      std::string host, port, path;
      if (auto st = policy::parse_opa_url(t.opa_url, host, port, path); !st) {
        return make_error(ctx + ": " + st.error().message);
      }
      if (t.opa_timeout.count() <= 0) {
        return make_error(ctx + ": the OPA timeout must be positive");
      }
    }
    if (t.peer_ids.empty() && t.peer_trust_domains.empty() && t.peer_patterns.empty() &&
        !t.allow_any_peer && t.opa_url.empty()) {
      const bool server = t.mode == Mode::kServer;
      return make_error(ctx + ": no peer rule, so every peer would be refused; add " +
                        (server ? "--allow-id, --allow-trust-domain or --allow-id-pattern"
                                : "--expect-id, --expect-trust-domain or --expect-id-pattern") +
                        ", an OPA decision (--opa-url), or, deliberately, "
                        "--allow-any-peer-in-bundles");
    }
    if (t.svid_id && t.svid_hint) {
      return make_error(ctx + ": choose the SVID by id or by hint, not both");
    }
    for (const auto& v : {t.tls_min_version, t.tls_max_version}) {
      if (v != "1.2" && v != "1.3") {
        return make_error(ctx + ": TLS version \"" + v + "\" is not 1.2 or 1.3");
      }
    }
    if (t.tls_min_version > t.tls_max_version) {
      return make_error(ctx + ": TLS minimum version " + t.tls_min_version +
                        " is above the maximum " + t.tls_max_version);
    }
    if (t.ktls != "auto" && t.ktls != "on" && t.ktls != "off") {
      return make_error(ctx + ": ktls \"" + t.ktls + "\" is not auto, on or off");
    }
    if (t.target.port == 0) {
      return make_error(ctx + ": target " + t.target.str() + " needs a port");
    }
    if (t.handshake_timeout.count() <= 0 || t.connect_timeout.count() <= 0) {
      return make_error(ctx + ": handshake and connect timeouts must be positive");
    }
  }
  return {};
}

}  // namespace spiffe_tunnel::config
