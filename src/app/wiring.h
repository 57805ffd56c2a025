#pragma once
// Turns the validated config::Config into the options of each module: the identity source, and
// per tunnel its policy (allow-list plus optional OPA, built once), its tls::TlsOptions and its
// tunnel::TunnelOptions. The only place that maps config's enums and endpoints onto other
// modules' types. Called by the app thread at startup.

#include <memory>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/config/config.h"
#include "spiffe_tunnel/policy/authorizer.h"
#include "spiffe_tunnel/policy/opa_client.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tunnel/tunnel.h"
#include "spiffe_tunnel/workload/workload_api_source.h"
#include "spiffe_tunnel/workload/x509_context.h"

namespace spiffe_tunnel::app {

// Who a tunnel lets through: the allow-list, then OPA when configured (null otherwise). Immutable
// once built; shared by the tunnel's TLS context and its sessions.
struct TunnelPolicy {
  std::shared_ptr<const policy::Authorizer> authorizer;
  std::shared_ptr<policy::OpaClient> opa;
};

// The files or Workload API source the configuration names; `observer` is given to a Workload
// API source (for its metrics).
base::Result<std::unique_ptr<workload::IdentitySource>> make_source(
    const config::Config& config, const workload::WorkloadApiObserver& observer = {});

// `metrics`, when given, receives the OPA client's decision metrics under the tunnel's name.
TunnelPolicy make_policy(const config::TunnelConfig& tunnel,
                         base::MetricsRegistry* metrics = nullptr);
tls::TlsOptions make_tls_options(const config::TunnelConfig& tunnel, const TunnelPolicy& policy);
// A systemd:NAME listener comes out as an InheritedSocket without a descriptor (fd -1); the
// daemon fills it from the sockets it was passed (socket_activation.h).
tunnel::TunnelOptions make_tunnel_options(const config::TunnelConfig& tunnel,
                                          const TunnelPolicy& policy);

// The TCP address of an endpoint that validate() allows to be TCP only (admin).
const config::HostPort& tcp_address(const config::Endpoint& endpoint);

}  // namespace spiffe_tunnel::app
