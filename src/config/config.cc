#include "spiffe_tunnel/config/config.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <unistd.h>

#include "spiffe_tunnel/policy/authorizer.h"

namespace spiffe_tunnel::config {
namespace {

using base::Error;
using base::make_error;
using base::Result;

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

  Result<std::vector<std::string>> list(const YAML::Node& n, const std::string& key) const {
    std::vector<std::string> out;
    if (n.IsScalar()) {
      out.push_back(n.Scalar());
      return out;
    }
    if (!n.IsSequence()) {
      return fail(n, "\"" + key + "\" must be a list");
    }
    for (const auto& item : n) {
      if (!item.IsScalar()) {
        return fail(item, "entries of \"" + key + "\" must be single values");
      }
      out.push_back(item.Scalar());
    }
    return out;
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
    for (const auto& s : *ids) {
      auto id = spiffe::SpiffeId::parse(s);
      if (!id) {
        return r.fail(n["ids"], section + ".ids: " + id.error().message);
      }
      t.peer_ids.push_back(*id);
    }
  }
  if (n["trust_domains"]) {
    auto tds = r.list(n["trust_domains"], "trust_domains");
    if (!tds) {
      return tds.error();
    }
    for (const auto& s : *tds) {
      auto td = spiffe::TrustDomain::parse(s);
      if (!td) {
        return r.fail(n["trust_domains"], section + ".trust_domains: " + td.error().message);
      }
      t.peer_trust_domains.push_back(*td);
    }
  }
  if (n["patterns"]) {
    auto ps = r.list(n["patterns"], "patterns");
    if (!ps) {
      return ps.error();
    }
    for (const auto& s : *ps) {
      auto p = policy::IdPattern::parse(s);
      if (!p) {
        return r.fail(n["patterns"], section + ".patterns: " + p.error().message);
      }
      t.peer_patterns.push_back(s);
    }
  }
  if (n["any"]) {
    t.allow_any_peer = n["any"].as<bool>(false);
  }
  return {};
}

Result<TunnelConfig> read_tunnel(const Reader& r, const YAML::Node& n, size_t index) {
  TunnelConfig t;
  t.origin = r.where(n);
  ST_TRY(r.only_keys(n,
                     {"name", "mode", "listen", "target", "svid", "allow", "expect", "tls",
                      "timeouts", "max_connections"},
                     "tunnel #" + std::to_string(index + 1)));
  t.name = n["name"] ? n["name"].Scalar() : "tunnel-" + std::to_string(index + 1);
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
      auto id = spiffe::SpiffeId::parse(s["id"].Scalar());
      if (!id) {
        return r.fail(s["id"], ctx + ": svid.id: " + id.error().message);
      }
      t.svid_id = *id;
    }
    if (s["hint"]) {
      t.svid_hint = s["hint"].Scalar();
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
    if (tl["min_version"]) t.tls_min_version = tl["min_version"].Scalar();
    if (tl["max_version"]) t.tls_max_version = tl["max_version"].Scalar();
    if (tl["cipher_suites"]) t.tls13_ciphersuites = tl["cipher_suites"].Scalar();
    if (tl["ciphers"]) t.tls12_ciphers = tl["ciphers"].Scalar();
    if (tl["ktls"]) t.ktls = tl["ktls"].Scalar();
    if (tl["server_name"]) t.server_name = tl["server_name"].Scalar();
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
  return t;
}

Result<Config> read_config(const Reader& r, const YAML::Node& root) {
  Config c;
  if (!root || root.IsNull()) {
    return make_error(r.origin + ": the file is empty");
  }
  ST_TRY(r.only_keys(root, {"identity", "tunnels", "admin", "log_level", "threads", "drain_timeout"},
                     "the top level"));
  if (const auto id = root["identity"]) {
    ST_TRY(r.only_keys(id, {"workload_api", "files"}, "identity"));
    if (id["workload_api"] && id["files"]) {
      return r.fail(id, "identity: choose either workload_api or files, not both");
    }
    if (id["workload_api"]) {
      c.identity.kind = IdentityConfig::Kind::kWorkloadApi;
      c.identity.workload_api = id["workload_api"].IsNull() ? "" : id["workload_api"].Scalar();
    }
    if (const auto f = id["files"]) {
      ST_TRY(r.only_keys(f, {"cert", "key", "bundles"}, "identity.files"));
      c.identity.kind = IdentityConfig::Kind::kFiles;
      if (!f["cert"] || !f["key"] || !f["bundles"]) {
        return r.fail(f, "identity.files needs cert, key and bundles");
      }
      c.identity.cert_file = f["cert"].Scalar();
      c.identity.key_file = f["key"].Scalar();
      if (!f["bundles"].IsMap()) {
        return r.fail(f["bundles"], "identity.files.bundles must map trust domain → file");
      }
      for (const auto& kv : f["bundles"]) {
        auto td = spiffe::TrustDomain::parse(kv.first.Scalar());
        if (!td) {
          return r.fail(kv.first, "identity.files.bundles: " + td.error().message);
        }
        c.identity.bundle_files.emplace_back(*td, kv.second.Scalar());
      }
    }
  }
  if (const auto a = root["admin"]) {
    ST_TRY(r.only_keys(a, {"listen"}, "admin"));
    if (a["listen"]) c.admin_listen = a["listen"].Scalar();
  }
  if (root["log_level"]) c.log_level = root["log_level"].Scalar();
  if (root["threads"]) {
    try {
      c.threads = root["threads"].as<size_t>();
    } catch (const YAML::Exception&) {
      return r.fail(root["threads"], "threads must be a number");
    }
  }
  ST_TRY(read_duration(r, root["drain_timeout"], "drain_timeout", c.drain_timeout));
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
  if (unit == "ms") return milliseconds(n);
  if (unit == "s" || unit.empty()) return milliseconds(n * 1000);
  if (unit == "m") return milliseconds(n * 60'000);
  if (unit == "h") return milliseconds(n * 3'600'000);
  return make_error(q + " has unknown unit \"" + std::string(unit) + "\" (use ms, s, m or h)");
}

Result<Config> load_config_text(const std::string& text, const std::string& origin) {
  Reader r{origin};
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    return make_error(origin + ":" + std::to_string(e.mark.line + 1) + ":" +
                      std::to_string(e.mark.column + 1) + ": YAML syntax error: " + e.msg);
  }
  Result<Config> c = Error{};
  try {
    c = read_config(r, root);
  } catch (const YAML::Exception& e) {
    // Type mismatches deep in yaml-cpp (e.g. a list where a value belongs).
    return make_error(origin + ":" + std::to_string(e.mark.line + 1) + ":" +
                      std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (!c) {
    return c;
  }
  auto st = validate(*c);
  if (!st) {
    return st.error();
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
    if (t.peer_ids.empty() && t.peer_trust_domains.empty() && t.peer_patterns.empty() &&
        !t.allow_any_peer) {
      const bool server = t.mode == Mode::kServer;
      return make_error(ctx + ": no peer rule, so every peer would be refused; add " +
                        (server ? "--allow-id, --allow-trust-domain or --allow-id-pattern"
                                : "--expect-id, --expect-trust-domain or --expect-id-pattern") +
                        " (or, deliberately, --allow-any-peer-in-bundles)");
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
