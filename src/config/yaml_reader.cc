// Reads the YAML configuration file into a Config. Every value goes through the parsers of
// values.h, so a file and the flags accept the same text; this file adds where it was written.

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "spiffe_tunnel/config/config.h"
#include "spiffe_tunnel/config/values.h"
#include "config/try.h"
#include "config/yaml_node.h"

namespace spiffe_tunnel::config {
namespace {

Status read_duration(const Reader& r, const YAML::Node& n, const std::string& key,
                     std::chrono::milliseconds& out) {
  return r.value(n, key, key + ": ", parse_duration, out);
}

// An optional true/false; leaves `out` alone when absent. `what` names it in the error.
Status read_bool(const Reader& r, const YAML::Node& n, const std::string& what, bool& out) {
  if (!n) {
    return {};
  }
  if (!n.IsScalar() || !YAML::convert<bool>::decode(n, out)) {
    return r.fail(n, what + " must be true or false");
  }
  return {};
}

Result<Mode> parse_mode(std::string_view text) {
  if (text == "server") {
    return Mode::kServer;
  }
  if (text == "client") {
    return Mode::kClient;
  }
  return make_error("mode \"" + std::string(text) + "\" is neither \"server\" nor \"client\"");
}

Result<PeerRules> read_peers(const Reader& r, const YAML::Node& n, const std::string& section) {
  ST_TRY(r.only_keys(n, {"ids", "trust_domains", "patterns", "any"}, section));
  PeerRuleText text;
  for (auto [key, out] : {std::pair{"ids", &text.ids},
                          std::pair{"trust_domains", &text.trust_domains},
                          std::pair{"patterns", &text.patterns}}) {
    if (n[key]) {
      auto entries = r.list(n[key], key, section + "." + key);
      if (!entries) {
        return entries.error();
      }
      *out = std::move(*entries);
    }
  }
  if (const auto any = n["any"]) {
    if (!any.IsScalar() || !YAML::convert<bool>::decode(any, text.any)) {
      return r.fail(any, section + ".any must be true or false");
    }
  }
  return parse_peer_rules(text);
}

Status read_svid(const Reader& r, const YAML::Node& s, const std::string& ctx, TunnelConfig& t) {
  ST_TRY(r.only_keys(s, {"id", "hint"}, ctx + " svid"));
  ST_TRY(r.value(s["id"], "id", ctx + ": svid.id: ", spiffe::SpiffeId::parse, t.svid_id));
  if (s["hint"]) {
    std::string hint;
    ST_TRY(r.optional_scalar(s["hint"], "hint", hint));
    t.svid_hint = hint;
  }
  return {};
}

Status read_tls(const Reader& r, const YAML::Node& tl, const std::string& ctx, TlsConfig& t) {
  ST_TRY(r.only_keys(
      tl, {"min_version", "max_version", "cipher_suites", "ciphers", "ktls", "server_name",
           "key_update_records", "session_resumption", "session_ticket_lifetime"},
      ctx + " tls"));
  const std::string prefix = ctx + ": ";
  ST_TRY(r.value(tl["min_version"], "min_version", prefix, parse_tls_version, t.min_version));
  ST_TRY(r.value(tl["max_version"], "max_version", prefix, parse_tls_version, t.max_version));
  ST_TRY(r.optional_scalar(tl["cipher_suites"], "cipher_suites", t.tls13_ciphersuites));
  ST_TRY(r.optional_scalar(tl["ciphers"], "ciphers", t.tls12_ciphers));
  ST_TRY(r.value(tl["ktls"], "ktls", prefix, parse_ktls, t.ktls));
  ST_TRY(r.optional_scalar(tl["server_name"], "server_name", t.server_name));
  ST_TRY(r.value(tl["key_update_records"], "key_update_records", prefix,
                 parse_key_update_records, t.key_update_records));
  ST_TRY(read_bool(r, tl["session_resumption"], prefix + "session_resumption",
                   t.session_resumption));
  ST_TRY(r.value(tl["session_ticket_lifetime"], "session_ticket_lifetime", prefix,
                 parse_ticket_lifetime, t.session_ticket_lifetime));
  return {};
}

Result<OpaConfig> read_opa(const Reader& r, const YAML::Node& o, const std::string& ctx) {
  ST_TRY(r.only_keys(o, {"url", "timeout", "cache"}, ctx + " opa"));
  std::string url;
  ST_TRY(r.optional_scalar(o["url"], "url", url));
  if (url.empty()) {
    return r.fail(o, ctx + ": opa.url is required");
  }
  OpaConfig opa;
  ST_TRY(r.value(o["url"], "url", ctx + ": ", parse_opa_url, opa.endpoint));
  ST_TRY(read_duration(r, o["timeout"], "timeout", opa.timeout));
  ST_TRY(read_duration(r, o["cache"], "cache", opa.cache_ttl));
  return opa;
}

// listen_mode, listen_owner, listen_group: how a unix socket the tunnel creates is set up.
Status read_listen_socket(const Reader& r, const YAML::Node& n, const std::string& ctx,
                          TunnelConfig& t) {
  const std::string prefix = ctx + ": ";
  UnixSocketOptions& o = t.listen_socket;
  ST_TRY(r.value(n["listen_mode"], "listen_mode", prefix + "listen_mode: ", parse_socket_mode,
                 o.mode));
  ST_TRY(r.value(n["listen_owner"], "listen_owner", prefix + "listen_owner: ", parse_user,
                 o.owner));
  ST_TRY(r.value(n["listen_group"], "listen_group", prefix + "listen_group: ", parse_group,
                 o.group));
  for (const char* key : {"listen_mode", "listen_owner", "listen_group"}) {
    if (n[key] && !t.listen.unix_path()) {
      return r.fail(n[key], prefix + key + " applies to a unix:/path listen address only (" +
                                t.listen.str() + " is not one)");
    }
  }
  return {};
}

Status read_multiplex(const Reader& r, const YAML::Node& n, const std::string& ctx,
                      TunnelConfig& t) {
  const std::string prefix = ctx + " multiplex: ";
  ST_TRY(r.only_keys(n, {"connections", "max_streams", "authority", "stream_window",
                         "connection_window"}, ctx + " multiplex"));
  MultiplexConfig& m = t.multiplex.emplace();
  const auto read = [&](const char* key, auto parse, std::size_t& out) {
    return r.value(n[key], key, prefix, [&](std::string_view v) { return parse(v, key); }, out);
  };
  ST_TRY(read("connections", parse_mux_count, m.connections));
  ST_TRY(read("max_streams", parse_mux_count, m.max_streams));
  ST_TRY(read("stream_window", parse_mux_window, m.stream_window));
  ST_TRY(read("connection_window", parse_mux_window, m.connection_window));
  return r.optional_scalar(n["authority"], "authority", m.authority);
}

// The sections after the addresses and peers: tls, opa, timeouts and limits.
Status read_tunnel_settings(const Reader& r, const YAML::Node& n, const std::string& ctx,
                            TunnelConfig& t) {
  ST_TRY(read_listen_socket(r, n, ctx, t));
  if (const auto tl = n["tls"]) {
    ST_TRY(read_tls(r, tl, ctx, t.tls));
  }
  if (const auto o = n["opa"]) {
    auto opa = read_opa(r, o, ctx);
    if (!opa) {
      return opa.error();
    }
    t.opa = std::move(*opa);
  }
  if (const auto to = n["timeouts"]) {
    ST_TRY(r.only_keys(to, {"handshake", "connect", "idle"}, ctx + " timeouts"));
    ST_TRY(read_duration(r, to["handshake"], "handshake", t.handshake_timeout));
    ST_TRY(read_duration(r, to["connect"], "connect", t.connect_timeout));
    ST_TRY(read_duration(r, to["idle"], "idle", t.idle_timeout));
  }
  const std::string prefix = ctx + ": ";
  ST_TRY(r.value(n["max_connections"], "max_connections", prefix, parse_max_connections,
                 t.max_connections));
  ST_TRY(r.value(n["max_handshakes"], "max_handshakes", prefix, parse_max_handshakes,
                 t.max_handshakes));
  ST_TRY(r.value(n["max_handshakes_per_source"], "max_handshakes_per_source", prefix,
                 parse_max_handshakes, t.max_handshakes_per_source));
  ST_TRY(r.value(n["buffer_size"], "buffer_size", prefix, parse_buffer_size, t.buffer_size));
  ST_TRY(r.value(n["proxy_protocol"], "proxy_protocol", prefix, parse_proxy_protocol,
                 t.proxy_protocol));
  ST_TRY(r.value(n["max_connection_age"], "max_connection_age", prefix, parse_duration,
                 t.max_connection_age));
  if (const auto ls = n["log_sessions"]) {
    bool on = true;
    ST_TRY(read_bool(r, ls, ctx + ": log_sessions", on));
    t.log_sessions = on;
  }
  if (const auto mx = n["multiplex"]) {
    ST_TRY(read_multiplex(r, mx, ctx, t));
  }
  return {};
}

Result<TunnelConfig> read_tunnel(const Reader& r, const YAML::Node& n, size_t index) {
  TunnelConfig t;
  t.origin = r.where(n);
  ST_TRY(r.only_keys(n,
                     {"name", "mode", "listen", "target", "svid", "allow", "expect", "opa", "tls",
                      "timeouts", "max_connections", "buffer_size", "proxy_protocol",
                      "log_sessions", "listen_mode", "listen_owner", "listen_group",
                      "max_connection_age", "max_handshakes", "max_handshakes_per_source",
                      "multiplex"},
                     "tunnel #" + std::to_string(index + 1)));
  t.name = "tunnel-" + std::to_string(index + 1);
  ST_TRY(r.optional_scalar(n["name"], "name", t.name));
  const std::string ctx = "tunnel \"" + t.name + "\"";
  auto required = [&](const char* key, const std::string& prefix, auto parse, auto& out) {
    return n[key] ? r.value(n[key], key, prefix, parse, out)
                  : Status(r.fail(n, ctx + ": \"" + key + "\" is required"));
  };
  ST_TRY(required("mode", ctx + ": ", parse_mode, t.mode));
  ST_TRY(required("listen", ctx + ": listen: ", parse_endpoint, t.listen));
  ST_TRY(required("target", ctx + ": target: ", parse_endpoint, t.target));
  if (const auto s = n["svid"]) {
    ST_TRY(read_svid(r, s, ctx, t));
  }
  const bool server = t.mode == Mode::kServer;
  const std::string peers_key = server ? "allow" : "expect";
  const std::string other_key = server ? "expect" : "allow";
  if (n[other_key]) {
    return r.fail(n[other_key], ctx + ": a " + (server ? "server" : "client") +
                                    " tunnel lists its peers under \"" + peers_key +
                                    "\", not \"" + other_key + "\"");
  }
  if (n[peers_key]) {
    auto peers = read_peers(r, n[peers_key], ctx + " " + peers_key);
    if (!peers) {
      return peers.error();
    }
    t.peers = std::move(*peers);
  }
  ST_TRY(read_tunnel_settings(r, n, ctx, t));
  return t;
}

Status read_files_identity(const Reader& r, const YAML::Node& f, IdentityConfig& id) {
  ST_TRY(r.only_keys(f, {"cert", "key", "bundles", "key_permissions"}, "identity.files"));
  ST_TRY(r.value(f["key_permissions"], "key_permissions", "identity.files.key_permissions: ",
                 parse_key_permissions, id.key_permissions));
  id.kind = IdentityConfig::Kind::kFiles;
  if (!f["cert"] || !f["key"] || !f["bundles"]) {
    return r.fail(f, "identity.files needs cert, key and bundles");
  }
  ST_TRY(r.optional_scalar(f["cert"], "cert", id.cert_file));
  ST_TRY(r.readable_file(f["cert"], "certificate file", id.cert_file));
  ST_TRY(r.optional_scalar(f["key"], "key", id.key_file));
  ST_TRY(r.readable_file(f["key"], "private key file", id.key_file));
  const auto bundles = f["bundles"];
  if (!bundles.IsMap()) {
    return r.fail(bundles, "identity.files.bundles must map trust domain → file");
  }
  if (bundles.size() == 0) {
    return r.fail(bundles, "identity.files.bundles is empty: add the bundle file of each "
                           "trust domain whose peers you accept");
  }
  for (const auto& kv : bundles) {
    auto td = spiffe::TrustDomain::parse(kv.first.Scalar());
    if (!td) {
      return r.fail(kv.first, "identity.files.bundles: " + td.error().message);
    }
    std::string path;
    ST_TRY(r.optional_scalar(kv.second, "bundles", path));
    ST_TRY(r.readable_file(kv.second, "bundle file", path));
    id.bundle_files.emplace_back(*td, path);
  }
  return {};
}

Status read_identity(const Reader& r, const YAML::Node& root, IdentityConfig& out) {
  const auto id = root["identity"];
  if (!id) {
    return r.fail(root, "no identity source: add identity.files or identity.workload_api");
  }
  ST_TRY(r.only_keys(id, {"workload_api", "files"}, "identity"));
  if (id["workload_api"] && id["files"]) {
    return r.fail(id, "identity: choose either workload_api or files, not both");
  }
  if (id["workload_api"]) {
    out.kind = IdentityConfig::Kind::kWorkloadApi;
    if (!id["workload_api"].IsNull()) {
      ST_TRY(r.optional_scalar(id["workload_api"], "workload_api", out.workload_api));
    }
  }
  if (const auto f = id["files"]) {
    ST_TRY(read_files_identity(r, f, out));
  }
  return {};
}

// admin, log_level, threads, drain_timeout, busy_poll, log_format, log_sessions,
// max_connection_age, max_handshakes, max_handshakes_per_source.
Status read_globals(const Reader& r, const YAML::Node& root, Config& c) {
  if (const auto a = root["admin"]) {
    ST_TRY(r.only_keys(a, {"listen"}, "admin"));
    std::string listen;
    ST_TRY(r.optional_scalar(a["listen"], "listen", listen));
    if (!listen.empty()) {  // "" keeps the admin endpoint off
      ST_TRY(r.value(a["listen"], "listen", "admin.listen: ", parse_endpoint, c.admin));
    }
  }
  ST_TRY(r.value(root["log_level"], "log_level", "log_level: ", parse_log_level, c.log_level));
  ST_TRY(r.value(root["threads"], "threads", "", parse_threads, c.threads));
  ST_TRY(read_duration(r, root["drain_timeout"], "drain_timeout", c.drain_timeout));
  ST_TRY(r.value(root["busy_poll"], "busy_poll", "busy_poll: ", parse_busy_poll, c.busy_poll));
  ST_TRY(r.value(root["log_format"], "log_format", "log_format: ", parse_log_format, c.log_format));
  ST_TRY(read_bool(r, root["log_sessions"], "log_sessions", c.log_sessions));
  ST_TRY(read_duration(r, root["max_connection_age"], "max_connection_age",
                       c.max_connection_age));
  ST_TRY(r.value(root["max_handshakes"], "max_handshakes", "max_handshakes: ",
                 parse_max_handshakes, c.max_handshakes));
  ST_TRY(r.value(root["max_handshakes_per_source"], "max_handshakes_per_source",
                 "max_handshakes_per_source: ", parse_max_handshakes,
                 c.max_handshakes_per_source));
  return {};
}

// Reads every section even after one failed, so that one pass names every broken part: the
// top-level keys, identity, the global settings and each tunnel each report their first error,
// one line each (every line starts with file:line:column).
Result<Config> read_config(const Reader& r, const YAML::Node& root) {
  Config c;
  c.file = r.origin;
  if (!root || root.IsNull()) {
    return make_error(r.origin + ": the file is empty");
  }
  std::vector<std::string> errors;
  const auto note = [&errors](const Status& st) {
    if (!st) {
      errors.push_back(st.error().message);
    }
  };
  note(r.only_keys(root,
                   {"identity", "tunnels", "admin", "log_level", "threads", "drain_timeout",
                    "busy_poll", "log_format", "log_sessions", "max_connection_age",
                    "max_handshakes", "max_handshakes_per_source"},
                   "the top level"));
  note(read_identity(r, root, c.identity));
  note(read_globals(r, root, c));
  const auto tunnels = root["tunnels"];
  if (!tunnels || !tunnels.IsSequence() || tunnels.size() == 0) {
    note(r.fail(tunnels ? tunnels : root, "\"tunnels\" must be a non-empty list"));
  } else {
    for (size_t i = 0; i < tunnels.size(); ++i) {
      auto t = read_tunnel(r, tunnels[i], i);
      if (t) {
        c.tunnels.push_back(std::move(*t));
      } else {
        errors.push_back(t.error().message);
      }
    }
  }
  if (!errors.empty()) {
    std::string all = errors.front();
    for (std::size_t i = 1; i < errors.size(); ++i) {
      all += "\n" + errors[i];
    }
    return make_error(all);
  }
  return c;
}

}  // namespace

Result<Config> read_config_text(const std::string& text, const std::string& origin) {
  Reader r{origin};
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return make_error(where_in(origin, e.mark) + ": YAML syntax error: " + e.msg);
  }
  try {
    return read_config(r, root);
  } catch (const YAML::Exception& e) {
    // Type mismatches deep in yaml-cpp (e.g. a list where a value belongs).
    return make_error(where_in(origin, e.mark) + ": " + e.msg);
  }
}

Result<Config> read_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return make_error("cannot read config file " + path + ": " + std::strerror(errno));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return read_config_text(ss.str(), path);
}

Result<Config> load_config_text(const std::string& text, const std::string& origin) {
  auto draft = read_config_text(text, origin);
  if (!draft) {
    return draft;
  }
  return finalize(std::move(*draft), {});
}

Result<Config> load_config_file(const std::string& path) {
  auto draft = read_config_file(path);
  if (!draft) {
    return draft;
  }
  return finalize(std::move(*draft), {});
}

}  // namespace spiffe_tunnel::config
