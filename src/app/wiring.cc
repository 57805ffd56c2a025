#include "wiring.h"

#include <cassert>

#include "spiffe_tunnel/workload/files_source.h"
#include "spiffe_tunnel/workload/workload_api_source.h"

namespace spiffe_tunnel::app {
namespace {

int openssl_version(config::TlsVersion v) {
  return v == config::TlsVersion::k1_2 ? TLS1_2_VERSION : TLS1_3_VERSION;
}

tls::KtlsMode ktls_mode(config::KtlsMode m) {
  switch (m) {
    case config::KtlsMode::kOn:
      return tls::KtlsMode::kOn;
    case config::KtlsMode::kOff:
      return tls::KtlsMode::kOff;
    case config::KtlsMode::kAuto:
      break;
  }
  return tls::KtlsMode::kAuto;
}

tunnel::ListenAddress listen_address(const config::TunnelConfig& t) {
  if (const config::HostPort* hp = t.listen.tcp()) {
    return tunnel::TcpAddress{hp->host, hp->port};
  }
  if (const config::UnixPath* path = t.listen.unix_path()) {
    const config::UnixSocketOptions& o = t.listen_socket;
    return tunnel::UnixListenAddress{path->path, o.mode, o.owner, o.group};
  }
  // The descriptor is handed over by the daemon (socket_activation.h).
  return tunnel::InheritedSocket{t.listen.systemd()->name, -1};
}

tunnel::TargetAddress target_address(const config::Endpoint& target) {
  if (const config::UnixPath* path = target.unix_path()) {
    return tunnel::UnixAddress{path->path};
  }
  const config::HostPort& hp = tcp_address(target);  // validate() refuses systemd: targets
  return tunnel::TcpAddress{hp.host, hp.port};
}

}  // namespace

base::Result<std::unique_ptr<workload::IdentitySource>> make_source(
    const config::Config& c, const workload::WorkloadApiObserver& observer) {
  switch (c.identity.kind) {
    case config::IdentityConfig::Kind::kFiles: {
      workload::FilesSourceOptions o;
      o.cert_file = c.identity.cert_file;
      o.key_file = c.identity.key_file;
      o.bundle_files = c.identity.bundle_files;
      o.strict_key_permissions = c.identity.key_permissions == config::KeyPermissions::kStrict;
      return std::unique_ptr<workload::IdentitySource>(
          std::make_unique<workload::FilesSource>(std::move(o)));
    }
    case config::IdentityConfig::Kind::kWorkloadApi: {
      auto source = workload::WorkloadApiSource::create(
          {.address = c.identity.workload_api, .observer = observer});
      if (!source) {
        return source.error();
      }
      return std::unique_ptr<workload::IdentitySource>(std::move(*source));
    }
    case config::IdentityConfig::Kind::kNone:
      break;
  }
  return base::make_error("no identity source is configured");
}

TunnelPolicy make_policy(const config::TunnelConfig& t, base::MetricsRegistry* metrics) {
  const config::PeerRules& p = t.peers;
  // With OPA as the only rule, every verified peer passes the list and OPA decides.
  const bool only_opa = t.opa && p.ids.empty() && p.trust_domains.empty() && p.patterns.empty();
  TunnelPolicy policy;
  policy.authorizer = std::make_shared<const policy::AllowListAuthorizer>(
      p.ids, p.trust_domains, p.patterns, p.any || only_opa);
  if (t.opa) {
    policy.opa = std::make_shared<policy::OpaClient>(policy::OpaOptions{
        .host = t.opa->endpoint.host,
        .port = t.opa->endpoint.port,
        .path = t.opa->endpoint.path,
        .timeout = t.opa->timeout,
        .cache_ttl = t.opa->cache_ttl,
    }, metrics != nullptr ? std::make_shared<policy::OpaMetrics>(*metrics, t.name) : nullptr);
  }
  return policy;
}

tls::TlsOptions make_tls_options(const config::TunnelConfig& t, const TunnelPolicy& policy) {
  tls::TlsOptions o;
  o.role = t.mode == config::Mode::kServer ? tls::Role::kServer : tls::Role::kClient;
  o.svid.id = t.svid_id;
  o.svid.hint = t.svid_hint;
  o.authorizer = policy.authorizer;
  o.min_version = openssl_version(t.tls.min_version);
  o.max_version = openssl_version(t.tls.max_version);
  if (!t.tls.tls13_ciphersuites.empty()) {
    o.tls13_ciphersuites = t.tls.tls13_ciphersuites;
  }
  if (!t.tls.tls12_ciphers.empty()) {
    o.tls12_ciphers = t.tls.tls12_ciphers;
  }
  o.ktls = ktls_mode(t.tls.ktls);
  o.server_name = t.tls.server_name;
  o.key_update_records = t.tls.key_update_records;
  o.session_resumption = t.tls.session_resumption;
  o.ticket_lifetime = t.tls.session_ticket_lifetime;
  if (t.multiplex) {
    o.alpn = "h2";  // HTTP/2 CONNECT streams, as HBONE (docs/multiplexing.md)
  }
  return o;
}

tunnel::TunnelOptions make_tunnel_options(const config::TunnelConfig& t,
                                          const TunnelPolicy& policy) {
  tunnel::TunnelOptions o;
  o.name = t.name;
  o.listen = listen_address(t);
  o.target = target_address(t.target);
  o.limits = {.handshake_timeout = t.handshake_timeout,
              .connect_timeout = t.connect_timeout,
              .idle_timeout = t.idle_timeout,
              .max_connection_age = t.max_connection_age.value_or(std::chrono::milliseconds(0)),
              .max_connections = t.max_connections,
              .max_handshakes = t.max_handshakes.value_or(256),
              .max_handshakes_per_source = t.max_handshakes_per_source.value_or(32),
              .buffer_size = t.buffer_size};
  o.opa = policy.opa;
  o.proxy_protocol = t.proxy_protocol == config::ProxyProtocol::kV2 ? tunnel::ProxyProtocol::kV2
                                                                    : tunnel::ProxyProtocol::kOff;
  o.log_sessions = t.log_sessions.value_or(true);
  if (t.multiplex) {
    const config::MultiplexConfig& m = *t.multiplex;
    tunnel::MuxOptions mux;
    mux.settings.max_streams = static_cast<uint32_t>(m.max_streams);
    mux.settings.stream_window = static_cast<uint32_t>(m.stream_window);
    mux.settings.connection_window = static_cast<uint32_t>(m.connection_window);
    mux.connections = m.connections;
    mux.authority = m.authority;
    o.mux = std::move(mux);
  }
  return o;
}

const config::HostPort& tcp_address(const config::Endpoint& endpoint) {
  const config::HostPort* hp = endpoint.tcp();
  assert(hp != nullptr);  // validate() allows no other kind where this is asked
  return *hp;
}

}  // namespace spiffe_tunnel::app
