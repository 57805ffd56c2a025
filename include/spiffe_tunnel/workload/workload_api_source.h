#pragma once
// WorkloadApiSource: identities from a SPIFFE Workload API endpoint (a SPIRE agent). Its thread
// holds one long-lived FetchX509SVID stream and turns every response into a complete
// X509Context; a response that does not parse in full is logged and dropped, and the last good
// context stays. When the stream ends it reconnects with jittered exponential backoff and, while
// disconnected, publishes nothing: the last identity keeps serving (expiry is the identity
// layer's concern). PermissionDenied after identities were delivered means they were revoked.
// The owner calls start() and stop(); callbacks run on the source's thread. Private keys stay in
// memory and never reach a log.

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/workload/x509_context.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace spiffe_tunnel::workload {

struct WorkloadApiOptions {
  // "unix:///absolute/path" or "tcp://IP:port"; "" = the SPIFFE_ENDPOINT_SOCKET environment
  // variable.
  std::string address;
  // First delay before reconnecting; doubles per failed attempt (±20% jitter).
  std::chrono::milliseconds initial_backoff{1000};
  // Cap of the delay, also used after errors that retrying soon will not fix (InvalidArgument).
  std::chrono::milliseconds max_backoff{30000};
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
  // Cancels the in-flight stream and joins the thread. Safe to call twice.
  void stop() override;
  std::string describe() const override;

 private:
  WorkloadApiSource(WorkloadApiOptions options, std::string target);
  void run();
  // Registers the call that stop() cancels; false when stopping.
  bool begin_call(grpc::ClientContext* call);
  void end_call();
  // Sleeps for `delay` unless stop() comes first; false when stopping.
  bool wait_for_retry(std::chrono::milliseconds delay);

  const WorkloadApiOptions options_;  // address resolved
  const std::string target_;          // gRPC target
  SourceCallbacks callbacks_;
  std::thread thread_;

  std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;                // guarded by mutex_
  grpc::ClientContext* call_ = nullptr;  // guarded by mutex_; the stream in flight, if any
};

}  // namespace spiffe_tunnel::workload
