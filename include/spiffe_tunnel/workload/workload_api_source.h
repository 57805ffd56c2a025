#pragma once
// WorkloadApiSource: identities from a SPIFFE Workload API endpoint (a SPIRE agent). It holds two
// long-lived streams, each on its own thread: FetchX509SVID (SVIDs and their bundles) and
// FetchX509Bundles (bundles only). Each message is a complete snapshot of its own stream and is
// parsed in full or logged and dropped, keeping that stream's last good message. The published
// X509Context is the SVIDs of the newest FetchX509SVID message plus the union of both streams'
// bundles, the message received last winning for a trust domain both name (the reason is in
// src/workload/x509_context_merger.h). Nothing is published before the first SVID, nor when a
// message changes nothing.
//
// A stream that ends reconnects with jittered exponential backoff, on its own schedule; while
// disconnected the source keeps the last state, so the last identity keeps serving (expiry is
// the identity layer's concern). FetchX509SVID never waits past the notAfter of the SVIDs it
// holds, and retries about every initial_backoff once they have expired, so an agent that comes
// back is used within about a second. PermissionDenied on FetchX509SVID after identities were
// delivered means they were revoked: on_revoked, both streams' state is forgotten and
// FetchX509Bundles restarts for a fresh snapshot. PermissionDenied on FetchX509Bundles revokes
// nothing; Unimplemented there (an agent without it) leaves FetchX509SVID as the only stream.
//
// The owner calls start() and stop(). Callbacks run on either stream thread, one at a time under
// the source's lock and in the order the contexts were built; they must not block or call stop().
// Private keys stay in memory and never reach a log.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/workload/x509_context.h"

namespace spiffe_tunnel::workload {

// Told about the FetchX509SVID stream, for metrics. Either function may be empty; both are
// called on the stream's thread and must not block.
struct WorkloadApiObserver {
  // true when the stream delivers its first message after (re)connecting, false when it ends.
  std::function<void(bool connected)> on_connection;
  // Each new attempt after the stream ended or failed to open.
  std::function<void()> on_reconnect;
};

struct WorkloadApiOptions {
  // "unix:///absolute/path" or "tcp://IP:port"; "" = the SPIFFE_ENDPOINT_SOCKET environment
  // variable.
  std::string address;
  // First delay before reconnecting; doubles per failed attempt (±20% jitter).
  std::chrono::milliseconds initial_backoff{1000};
  // Cap of the delay, also used after errors that retrying soon will not fix (InvalidArgument).
  std::chrono::milliseconds max_backoff{30000};
  WorkloadApiObserver observer;
};

class WorkloadApiSource final : public IdentitySource {
 public:
  // Resolves and validates the address; the error names the address and what is wrong with it.
  // Does not connect.
  static base::Result<std::unique_ptr<WorkloadApiSource>> create(WorkloadApiOptions options);

  // Maps an endpoint address to a gRPC target: unix:///p → "unix:/p", tcp://1.2.3.4:80 →
  // "ipv4:1.2.3.4:80", tcp://[::1]:80 → "ipv6:[::1]:80". Rejects what SPIFFE forbids: a unix
  // host part or relative path, a tcp host name, path or missing port, query, fragment.
  static base::Result<std::string> grpc_target(std::string_view address);

  ~WorkloadApiSource() override;

  // IdentitySource
  void start(SourceCallbacks callbacks) override;
  // Cancels the streams in flight and joins both threads. Safe to call twice.
  void stop() override;
  std::string describe() const override;

 private:
  class Streams;  // the two stream loops and the state they share; in the .cc

  WorkloadApiSource(WorkloadApiOptions options, std::string target);

  const WorkloadApiOptions options_;  // address resolved
  const std::string target_;          // gRPC target
  std::unique_ptr<Streams> streams_;
  std::thread svid_thread_;           // holds FetchX509SVID
  std::thread bundles_thread_;        // holds FetchX509Bundles
};

}  // namespace spiffe_tunnel::workload
