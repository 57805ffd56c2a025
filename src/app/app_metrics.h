#pragma once
// Process-wide metrics that belong to no single module: what was built, and the Workload API
// connection as the identity source sees it. Registered once by the daemon on its registry; see
// docs/metrics.md.

#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/workload/workload_api_source.h"

namespace spiffe_tunnel::app {

// spiffe_tunnel_build_info{version,openssl,openssl_build,grpc} 1: the project version from
// CMake, the OpenSSL library in use (read at run time) and the one built against, and gRPC's.
void register_build_info(base::MetricsRegistry& registry);

// spiffe_tunnel_workload_api_connected (1 while the FetchX509SVID stream answers) and
// spiffe_tunnel_workload_api_reconnects_total. The functions returned keep references into
// `registry`, which must outlive the source they are given to.
workload::WorkloadApiObserver workload_api_observer(base::MetricsRegistry& registry);

}  // namespace spiffe_tunnel::app
