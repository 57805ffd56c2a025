#include "app_metrics.h"

#include <grpc/grpc.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#ifndef SPIFFE_TUNNEL_VERSION
#define SPIFFE_TUNNEL_VERSION "unknown"
#endif

namespace spiffe_tunnel::app {

void register_build_info(base::MetricsRegistry& registry) {
  registry.info("spiffe_tunnel_build_info",
                "Always 1; the labels say which version runs and with which libraries.",
                {{"version", SPIFFE_TUNNEL_VERSION},
                 {"openssl", OpenSSL_version(OPENSSL_VERSION)},
                 {"openssl_build", OPENSSL_VERSION_TEXT},
                 {"grpc", grpc_version_string()}});
}

workload::WorkloadApiObserver workload_api_observer(base::MetricsRegistry& registry) {
  base::Gauge& connected = registry.gauge(
      "spiffe_tunnel_workload_api_connected",
      "1 while the Workload API's FetchX509SVID stream is open and has answered, else 0.");
  base::Counter& reconnects = registry.counter(
      "spiffe_tunnel_workload_api_reconnects_total",
      "New FetchX509SVID attempts after the stream ended or could not be opened.");
  return {.on_connection = [&connected](bool up) { connected.set(up ? 1 : 0); },
          .on_reconnect = [&reconnects] { reconnects.inc(); }};
}

}  // namespace spiffe_tunnel::app
