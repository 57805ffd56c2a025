// The cross-field rules of a Config, checked once after every value was parsed and every override
// applied. Single values were range-checked by their parsers (values.h) already.

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "spiffe_tunnel/config/config.h"
#include "spiffe_tunnel/config/values.h"

namespace spiffe_tunnel::config {
namespace {

using base::make_error;
using base::Status;

bool readable(const std::string& path) { return ::access(path.c_str(), R_OK) == 0; }

Status validate_identity(const IdentityConfig& id) {
  using K = IdentityConfig::Kind;
  if (id.kind == K::kNone) {
    return make_error(
        "no identity source: give --cert/--key/--bundle files or --workload-api (in a config "
        "file: identity.files or identity.workload_api)");
  }
  if (id.kind != K::kFiles) {
    return {};
  }
  for (const auto& [what, path] :
       {std::pair{"certificate", id.cert_file}, std::pair{"private key", id.key_file}}) {
    if (path.empty()) {
      return make_error(std::string("no ") + what + " file given");
    }
    if (!readable(path)) {
      return make_error(std::string(what) + " file " + path + ": " + std::strerror(errno));
    }
  }
  if (id.bundle_files.empty()) {
    return make_error("no trust bundle given: add --bundle TRUST_DOMAIN=FILE for each trust "
                      "domain whose peers you accept");
  }
  for (const auto& [td, path] : id.bundle_files) {
    if (!readable(path)) {
      return make_error("bundle file " + path + " for trust domain " + td.name() + ": " +
                        std::strerror(errno));
    }
  }
  return {};
}

// Which kinds of address go where, and the settings that depend on the kind.
Status validate_multiplex(const TunnelConfig& t, const std::string& ctx) {
  if (!t.multiplex) {
    return {};
  }
  const MultiplexConfig& m = *t.multiplex;
  if (t.mode == Mode::kClient && m.authority.empty()) {
    return make_error(ctx + ": multiplex needs an authority on a client tunnel: the server "
                            "tunnel's target as written there (host:port), which is what each "
                            "stream asks it to connect");
  }
  if (t.mode == Mode::kServer && !m.authority.empty()) {
    return make_error(ctx + ": multiplex authority is for client tunnels; a server tunnel "
                            "accepts streams for its own target only");
  }
  if (t.proxy_protocol != ProxyProtocol::kOff) {
    return make_error(ctx + ": proxy_protocol does not combine with multiplex yet");
  }
  if (m.connection_window < m.stream_window) {
    return make_error(ctx + ": multiplex connection_window must be at least stream_window");
  }
  if (t.tls.max_version != TlsVersion::k1_3 && t.tls.min_version != TlsVersion::k1_3) {
    return make_error(ctx + ": multiplex needs TLS 1.3");
  }
  return {};
}

Status validate_addresses(const TunnelConfig& t, const std::string& ctx) {
  if (t.target.systemd()) {
    return make_error(ctx + ": target " + t.target.str() +
                      ": systemd: names a listening socket handed over by socket activation; a "
                      "target is host:port or unix:/path");
  }
  if (!t.listen_socket.empty() && !t.listen.unix_path()) {
    return make_error(ctx + ": listen_mode, listen_owner and listen_group apply to a unix:/path "
                            "listen address only (" + t.listen.str() + " is not one)");
  }
  // kTLS is a TCP upper-layer protocol; a unix socket always keeps TLS in userspace.
  const Endpoint& tls_side = t.mode == Mode::kServer ? t.listen : t.target;
  if (t.tls.ktls == KtlsMode::kOn && tls_side.unix_path()) {
    return make_error(ctx + ": ktls is \"on\" but the TLS side (" + tls_side.str() +
                      ") is a unix socket, which kernel TLS does not support; use ktls: auto "
                      "or off");
  }
  return {};
}

// The rules of one tunnel on its own; `ctx` names it.
Status validate_tunnel(const TunnelConfig& t, const std::string& ctx) {
  if (t.opa && t.opa->timeout.count() <= 0) {
    return make_error(ctx + ": the OPA timeout must be positive");
  }
  if (t.peers.empty() && !t.opa) {
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
  if (t.tls.min_version > t.tls.max_version) {
    return make_error(ctx + ": TLS minimum version " +
                      std::string(tls_version_name(t.tls.min_version)) + " is above the maximum " +
                      std::string(tls_version_name(t.tls.max_version)));
  }
  if (t.tls.session_resumption && t.tls.max_version != TlsVersion::k1_3) {
    return make_error(ctx + ": session_resumption is TLS 1.3 only (PSK with ECDHE); the maximum "
                            "version is " + std::string(tls_version_name(t.tls.max_version)));
  }
  if (const HostPort* target = t.target.tcp(); target && target->port == 0) {
    return make_error(ctx + ": target " + t.target.str() + " needs a port");
  }
  if (t.proxy_protocol != ProxyProtocol::kOff && t.mode != Mode::kServer) {
    return make_error(ctx + ": proxy_protocol is for server tunnels, whose target is the "
                            "backend; a client tunnel's target is the remote spiffe-tunnel "
                            "(set it on that side's server tunnel)");
  }
  if (auto st = validate_multiplex(t, ctx); !st) {
    return st;
  }
  if (auto st = validate_addresses(t, ctx); !st) {
    return st;
  }
  if (t.handshake_timeout.count() <= 0 || t.connect_timeout.count() <= 0) {
    return make_error(ctx + ": handshake and connect timeouts must be positive");
  }
  return {};
}

Status validate_tunnels(const std::vector<TunnelConfig>& tunnels) {
  if (tunnels.empty()) {
    return make_error("no tunnel configured");
  }
  std::set<std::string> names;
  std::set<std::string> listens;
  for (const auto& t : tunnels) {
    const std::string ctx = (t.origin.empty() ? "" : t.origin + ": ") + "tunnel \"" + t.name + "\"";
    if (!names.insert(t.name).second) {
      return make_error(ctx + ": the name is used by another tunnel");
    }
    // Port 0 picks a free port, so two of them never collide. unix: paths and systemd: names
    // compare as written (unix:///x and unix:/x are the same path once parsed).
    const HostPort* listen = t.listen.tcp();
    if ((!listen || listen->port != 0) && !listens.insert(t.listen.str()).second) {
      return make_error(ctx + ": listen address " + t.listen.str() + " is used by another tunnel");
    }
    if (auto st = validate_tunnel(t, ctx); !st) {
      return st;
    }
  }
  return {};
}

}  // namespace

Status validate(const Config& c) {
  Status st = validate_identity(c.identity);
  if (st) {
    st = validate_tunnels(c.tunnels);
  }
  if (st && c.admin && !c.admin->tcp()) {
    st = make_error("admin endpoint " + c.admin->str() + ": the admin endpoint listens on TCP "
                    "host:port only");
  }
  if (st || c.file.empty()) {
    return st;
  }
  // Tunnel errors carry the tunnel's file:line:col already; name at least the file otherwise.
  const std::string& msg = st.error().message;
  return msg.rfind(c.file + ":", 0) == 0 ? st.error() : st.error().wrap(c.file);
}

base::Result<Config> finalize(Config draft, const Overrides& o) {
  if (o.log_level) {
    draft.log_level = *o.log_level;
  }
  if (o.threads) {
    draft.threads = *o.threads;
  }
  if (o.admin) {
    draft.admin = *o.admin;
  }
  if (o.busy_poll) {
    draft.busy_poll = *o.busy_poll;
  }
  if (o.log_format) {
    draft.log_format = *o.log_format;
  }
  for (TunnelConfig& t : draft.tunnels) {
    t.log_sessions = t.log_sessions.value_or(draft.log_sessions);
    t.max_connection_age = t.max_connection_age.value_or(draft.max_connection_age);
    t.max_handshakes = t.max_handshakes.value_or(draft.max_handshakes);
    t.max_handshakes_per_source =
        t.max_handshakes_per_source.value_or(draft.max_handshakes_per_source);
  }
  if (auto st = validate(draft); !st) {
    return st.error();
  }
  return draft;
}

}  // namespace spiffe_tunnel::config
