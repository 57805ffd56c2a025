#include "spiffe_tunnel/config/flags.h"

#include <tuple>

#include "spiffe_tunnel/config/values.h"
#include "config/try.h"

namespace spiffe_tunnel::config {
namespace {

using base::make_error;
using base::Result;
using base::Status;

// Parses a flag that was given through one of the parsers of values.h; leaves `out` (the model's
// default) alone when it was not.
template <typename T, typename Parse>
Status flag_value(const std::string& text, const std::string& flag, Parse&& parse, T& out) {
  if (text.empty()) {
    return {};
  }
  auto v = parse(text);
  if (!v) {
    return v.error().wrap("flag " + flag);
  }
  out = std::move(*v);
  return {};
}

std::vector<Sourced> sourced(const std::vector<std::string>& values, const std::string& flag) {
  std::vector<Sourced> out;
  for (const auto& v : values) {
    out.push_back({v, "flag " + flag});
  }
  return out;
}

}  // namespace

Status read_identity_flags(const TunnelFlags& f, IdentityConfig& id) {
  const bool files = !f.cert.empty() || !f.key.empty() || !f.bundles.empty();
  const bool wl = f.use_workload_api || !f.workload_api.empty();
  if (files && wl) {
    return make_error("choose either --cert/--key/--bundle or --workload-api, not both");
  }
  if (wl) {
    id.kind = IdentityConfig::Kind::kWorkloadApi;
    id.workload_api = f.workload_api;
  }
  if (!files) {
    return {};
  }
  id.kind = IdentityConfig::Kind::kFiles;
  id.cert_file = f.cert;
  id.key_file = f.key;
  ST_TRY(flag_value(f.key_permissions, "--key-permissions", parse_key_permissions,
                    id.key_permissions));
  if (f.cert.empty() || f.key.empty()) {
    return make_error("--cert and --key are both required with files");
  }
  for (const auto& b : f.bundles) {
    const size_t eq = b.find('=');
    if (eq == std::string::npos) {
      return make_error("flag --bundle \"" + b + "\": expected TRUST_DOMAIN=FILE");
    }
    auto td = spiffe::TrustDomain::parse(b.substr(0, eq));
    if (!td) {
      return td.error().wrap("flag --bundle");
    }
    id.bundle_files.emplace_back(*td, b.substr(eq + 1));
  }
  return {};
}

namespace {

Status read_peer_flags(const TunnelFlags& f, TunnelConfig& t) {
  const std::string verb = t.mode == Mode::kServer ? "--allow" : "--expect";
  auto peers = parse_peer_rules({.ids = sourced(f.peer_ids, verb + "-id"),
                                 .trust_domains = sourced(f.peer_trust_domains, verb + "-trust-domain"),
                                 .patterns = sourced(f.peer_patterns, verb + "-id-pattern"),
                                 .any = f.allow_any});
  if (!peers) {
    return peers.error();
  }
  t.peers = std::move(*peers);
  if (!f.opa_url.empty()) {
    OpaConfig opa;
    ST_TRY(flag_value(f.opa_url, "--opa-url", parse_opa_url, opa.endpoint));
    ST_TRY(flag_value(f.opa_timeout, "--opa-timeout", parse_duration, opa.timeout));
    t.opa = opa;
  } else {
    // Checked even without --opa-url, so that a typo never passes silently.
    std::chrono::milliseconds unused{};
    ST_TRY(flag_value(f.opa_timeout, "--opa-timeout", parse_duration, unused));
  }
  return {};
}

Status read_tunnel_settings(const TunnelFlags& f, TunnelConfig& t) {
  ST_TRY(flag_value(f.tls_min, "--tls-min-version", parse_tls_version, t.tls.min_version));
  ST_TRY(flag_value(f.tls_max, "--tls-max-version", parse_tls_version, t.tls.max_version));
  t.tls.tls13_ciphersuites = f.cipher_suites;
  t.tls.tls12_ciphers = f.ciphers;
  ST_TRY(flag_value(f.ktls, "--ktls", parse_ktls, t.tls.ktls));
  t.tls.server_name = f.server_name;
  ST_TRY(flag_value(f.key_update_records, "--key-update-records", parse_key_update_records,
                    t.tls.key_update_records));
  t.tls.session_resumption = t.tls.session_resumption || f.session_resumption;
  ST_TRY(flag_value(f.session_ticket_lifetime, "--session-ticket-lifetime",
                    parse_ticket_lifetime, t.tls.session_ticket_lifetime));
  ST_TRY(flag_value(f.handshake_timeout, "--handshake-timeout", parse_duration,
                    t.handshake_timeout));
  ST_TRY(flag_value(f.connect_timeout, "--connect-timeout", parse_duration, t.connect_timeout));
  ST_TRY(flag_value(f.idle_timeout, "--idle-timeout", parse_duration, t.idle_timeout));
  ST_TRY(flag_value(f.max_connection_age, "--max-connection-age", parse_duration,
                    t.max_connection_age));
  ST_TRY(flag_value(f.max_connections, "--max-connections", parse_max_connections,
                    t.max_connections));
  ST_TRY(flag_value(f.max_handshakes, "--max-handshakes", parse_max_handshakes,
                    t.max_handshakes));
  ST_TRY(flag_value(f.max_handshakes_per_source, "--max-handshakes-per-source",
                    parse_max_handshakes, t.max_handshakes_per_source));
  ST_TRY(flag_value(f.buffer_size, "--buffer-size", parse_buffer_size, t.buffer_size));
  ST_TRY(flag_value(f.proxy_protocol, "--proxy-protocol", parse_proxy_protocol,
                    t.proxy_protocol));
  ST_TRY(flag_value(f.listen_mode, "--listen-mode", parse_socket_mode, t.listen_socket.mode));
  ST_TRY(flag_value(f.listen_owner, "--listen-owner", parse_user, t.listen_socket.owner));
  ST_TRY(flag_value(f.listen_group, "--listen-group", parse_group, t.listen_socket.group));
  return {};
}

}  // namespace

Result<Config> read_tunnel_flags(const TunnelFlags& f, Mode mode) {
  Config c;
  ST_TRY(read_identity_flags(f, c.identity));
  TunnelConfig t;
  t.mode = mode;
  t.name = !f.name.empty() ? f.name : mode == Mode::kServer ? "server" : "client";
  t.origin = "command line";
  // Required flags: parsed even when empty, so that "" is refused as an address.
  for (auto [text, flag, out] : {std::tuple{&f.listen, "--listen", &t.listen},
                                 std::tuple{&f.target, "--target", &t.target}}) {
    auto e = parse_endpoint(*text);
    if (!e) {
      return e.error().wrap(std::string("flag ") + flag);
    }
    *out = std::move(*e);
  }
  ST_TRY(flag_value(f.svid, "--svid", spiffe::SpiffeId::parse, t.svid_id));
  if (!f.svid_hint.empty()) {
    t.svid_hint = f.svid_hint;
  }
  ST_TRY(read_peer_flags(f, t));
  ST_TRY(read_tunnel_settings(f, t));
  c.tunnels.push_back(std::move(t));
  return c;
}

Result<Overrides> read_global_flags(const GlobalFlags& f) {
  Overrides o;
  ST_TRY(flag_value(f.log_level, "--log-level", parse_log_level, o.log_level));
  ST_TRY(flag_value(f.log_format, "--log-format", parse_log_format, o.log_format));
  ST_TRY(flag_value(f.threads, "--threads", parse_threads, o.threads));
  ST_TRY(flag_value(f.admin, "--admin", parse_endpoint, o.admin));
  ST_TRY(flag_value(f.busy_poll, "--busy-poll", parse_busy_poll, o.busy_poll));
  return o;
}

}  // namespace spiffe_tunnel::config
