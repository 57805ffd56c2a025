#pragma once
// The log lines of WorkloadApiSource's two streams. Each stream logs its state changes once each
// (first identity, update, lost, reconnected, a new kind of failure); repeats of the same
// failure go to debug. FetchX509SVID speaks for the agent's reachability, so FetchX509Bundles
// stays quieter about failures both streams see. A log belongs to its stream's thread; never
// logs key material. Private to the workload module.

#include <grpcpp/support/status.h>

#include <chrono>
#include <optional>
#include <string>

#include "spiffe_tunnel/workload/x509_context.h"

namespace spiffe_tunnel::workload {

// "PermissionDenied: no identity issued", or "the agent ended the stream" for OK.
std::string describe_status(const grpc::Status& status);
// "2 SVID(s) spiffe://a/x (hint internal), spiffe://a/y; bundles a, b".
std::string summarize(const X509Context& ctx);

class SvidStreamLog {
 public:
  explicit SvidStreamLog(std::string address);

  // The stream's message changed the published context to `ctx`.
  void updated(const X509Context& ctx);
  // The message repeats the identity already held, e.g. the first one after an agent restart.
  void unchanged();
  void discarded(const std::string& reason);
  // The stream ended with `status`; the next attempt comes after `retry_in`.
  void ended(const grpc::Status& status, bool was_streaming, bool revoked,
             std::chrono::milliseconds retry_in);

 private:
  const std::string address_;
  const std::chrono::steady_clock::time_point started_;
  bool ever_updated_ = false;
  bool lost_ = false;  // the stream ended since the last good message
  bool hinted_ = false;
  std::optional<grpc::StatusCode> last_failure_;
};

class BundlesStreamLog {
 public:
  explicit BundlesStreamLog(std::string address);

  // The stream's message changed the published context to `ctx`.
  void updated(const X509Context& ctx);
  // The message changed nothing that is published.
  void unchanged();
  // The message is kept until FetchX509SVID delivers the first identity.
  void held();
  void discarded(const std::string& reason);
  void ended(const grpc::Status& status, bool was_streaming, std::chrono::milliseconds retry_in);
  // The agent answered Unimplemented; the stream is not tried again.
  void not_offered(const grpc::Status& status);
  // The stream is restarted after a revocation; what it said before no longer counts.
  void restarted();

 private:
  void good_message();

  const std::string address_;
  bool ever_delivered_ = false;
  bool lost_ = false;  // the stream ended since the last good message
  std::optional<grpc::StatusCode> last_failure_;
};

}  // namespace spiffe_tunnel::workload
