#pragma once
// FakeWorkloadApi: an in-process SPIFFE Workload API server on a Unix socket, for injecting the
// faults a real agent produces rarely or never on demand. It is as strict about the security
// header as SPIRE on every RPC (exactly one "workload.spiffe.io: true", else InvalidArgument) and
// serves FetchX509SVID and FetchX509Bundles each from its own script: each queued step either
// writes a message to that RPC's open stream or ends the stream with a status. Tests call it from
// their own thread; the gRPC handlers run on the server's threads. Header-only, because the test
// build compiles only *_test.cc files.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>

#include "workload.grpc.pb.h"

namespace spiffe_tunnel::workload::testing {

class FakeWorkloadApi final : public SpiffeWorkloadAPI::Service {
 public:
  // Serves on `socket_path` (absolute) until destroyed.
  explicit FakeWorkloadApi(std::string socket_path) : path_(std::move(socket_path)) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + path_, grpc::InsecureServerCredentials());
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }

  ~FakeWorkloadApi() override {
    {
      std::lock_guard lock(mutex_);
      shutting_down_ = true;
    }
    cv_.notify_all();
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      server_->Wait();
    }
  }

  bool serving() const { return server_ != nullptr; }
  std::string address() const { return "unix://" + path_; }

  // --- FetchX509SVID
  // Queues a message for the open stream (or the next one).
  void send(X509SVIDResponse response) { push(svids_, std::move(response), grpc::Status::OK); }
  // Queues the end of the open stream (or the next one) with `status`.
  void end_stream(grpc::Status status) { push(svids_, std::nullopt, std::move(status)); }
  // While set, every new call is answered at once with `status` (after the header check).
  void reject_calls_with(std::optional<grpc::Status> status) {
    std::lock_guard lock(mutex_);
    svids_.reject = std::move(status);
  }
  // Calls that passed the header check.
  int calls() const { return svids_.calls.load(); }
  int open_streams() const { return svids_.open_streams.load(); }
  bool script_done() const {
    std::lock_guard lock(mutex_);
    return svids_.script.empty();
  }

  // --- FetchX509Bundles: the same, for the other stream. It serves (an empty script) by default;
  // reject_bundles_calls_with(Unimplemented) plays an agent without the RPC.
  void send_bundles(X509BundlesResponse response) {
    push(bundles_, std::move(response), grpc::Status::OK);
  }
  void end_bundles_stream(grpc::Status status) { push(bundles_, std::nullopt, std::move(status)); }
  void reject_bundles_calls_with(std::optional<grpc::Status> status) {
    std::lock_guard lock(mutex_);
    bundles_.reject = std::move(status);
  }
  int bundles_calls() const { return bundles_.calls.load(); }
  int open_bundles_streams() const { return bundles_.open_streams.load(); }
  bool bundles_script_done() const {
    std::lock_guard lock(mutex_);
    return bundles_.script.empty();
  }

  // Calls of either RPC that failed the header check.
  int header_rejections() const { return header_rejections_.load(); }

  grpc::Status FetchX509SVID(grpc::ServerContext* context, const X509SVIDRequest* /*request*/,
                             grpc::ServerWriter<X509SVIDResponse>* writer) override {
    return serve(context, writer, svids_);
  }

  grpc::Status FetchX509Bundles(grpc::ServerContext* context,
                                const X509BundlesRequest* /*request*/,
                                grpc::ServerWriter<X509BundlesResponse>* writer) override {
    return serve(context, writer, bundles_);
  }

 private:
  template <typename Response>
  struct Step {
    std::optional<Response> message;
    grpc::Status status;
  };

  // One RPC's script and counters.
  template <typename Response>
  struct Rpc {
    std::deque<Step<Response>> script;   // guarded by mutex_
    std::optional<grpc::Status> reject;  // guarded by mutex_
    std::atomic<int> calls{0};
    std::atomic<int> open_streams{0};
  };

  template <typename Response>
  void push(Rpc<Response>& rpc, std::optional<std::type_identity_t<Response>> message,
            grpc::Status status) {
    {
      std::lock_guard lock(mutex_);
      rpc.script.push_back(Step<Response>{std::move(message), std::move(status)});
    }
    cv_.notify_all();
  }

  template <typename Response>
  grpc::Status serve(grpc::ServerContext* context, grpc::ServerWriter<Response>* writer,
                     Rpc<Response>& rpc) {
    const auto& md = context->client_metadata();
    const auto [first, last] = md.equal_range("workload.spiffe.io");
    if (std::distance(first, last) != 1 ||
        std::string(first->second.data(), first->second.size()) != "true") {
      ++header_rejections_;
      return {grpc::StatusCode::INVALID_ARGUMENT, "security header missing from request"};
    }
    ++rpc.calls;
    std::unique_lock lock(mutex_);
    if (rpc.reject) {
      return *rpc.reject;
    }
    ++rpc.open_streams;
    struct Closed {
      std::atomic<int>& n;
      ~Closed() { --n; }
    } closed{rpc.open_streams};
    for (;;) {
      cv_.wait_for(lock, std::chrono::milliseconds(5),
                   [&] { return shutting_down_ || !rpc.script.empty(); });
      if (shutting_down_ || context->IsCancelled()) {
        return grpc::Status::CANCELLED;
      }
      if (rpc.script.empty()) {
        continue;
      }
      Step<Response> step = std::move(rpc.script.front());
      rpc.script.pop_front();
      if (!step.message) {
        return step.status;
      }
      lock.unlock();
      const bool written = writer->Write(*step.message);
      lock.lock();
      if (!written) {
        return grpc::Status::CANCELLED;
      }
    }
  }

  const std::string path_;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<int> header_rejections_{0};
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  Rpc<X509SVIDResponse> svids_;
  Rpc<X509BundlesResponse> bundles_;
  bool shutting_down_ = false;  // guarded by mutex_
};

}  // namespace spiffe_tunnel::workload::testing
