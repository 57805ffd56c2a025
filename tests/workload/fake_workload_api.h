#pragma once
// FakeWorkloadApi: an in-process SPIFFE Workload API server on a Unix socket, for injecting the
// faults a real agent produces rarely or never on demand. It is as strict about the security
// header as SPIRE (exactly one "workload.spiffe.io: true", else InvalidArgument) and serves
// FetchX509SVID from a script: each queued step either writes a message to the open stream or
// ends the stream with a status. Tests call it from their own thread; the gRPC handler runs on
// the server's threads. Header-only, because the test build compiles only *_test.cc files.

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

  // Queues a message for the open stream (or the next one).
  void send(X509SVIDResponse response) { push(Step{std::move(response), grpc::Status::OK}); }
  // Queues the end of the open stream (or the next one) with `status`.
  void end_stream(grpc::Status status) { push(Step{std::nullopt, std::move(status)}); }
  // While set, every new call is answered at once with `status` (after the header check).
  void reject_calls_with(std::optional<grpc::Status> status) {
    std::lock_guard lock(mutex_);
    reject_ = std::move(status);
  }

  // FetchX509SVID calls that passed the header check, and those that did not.
  int calls() const { return calls_.load(); }
  int header_rejections() const { return header_rejections_.load(); }
  int open_streams() const { return open_streams_.load(); }
  bool script_done() const {
    std::lock_guard lock(mutex_);
    return script_.empty();
  }

  grpc::Status FetchX509SVID(grpc::ServerContext* context, const X509SVIDRequest* /*request*/,
                             grpc::ServerWriter<X509SVIDResponse>* writer) override {
    const auto& md = context->client_metadata();
    const auto [first, last] = md.equal_range("workload.spiffe.io");
    if (std::distance(first, last) != 1 ||
        std::string(first->second.data(), first->second.size()) != "true") {
      ++header_rejections_;
      return {grpc::StatusCode::INVALID_ARGUMENT, "security header missing from request"};
    }
    ++calls_;
    std::unique_lock lock(mutex_);
    if (reject_) {
      return *reject_;
    }
    ++open_streams_;
    struct Closed {
      std::atomic<int>& n;
      ~Closed() { --n; }
    } closed{open_streams_};
    for (;;) {
      cv_.wait_for(lock, std::chrono::milliseconds(5),
                   [this] { return shutting_down_ || !script_.empty(); });
      if (shutting_down_ || context->IsCancelled()) {
        return grpc::Status::CANCELLED;
      }
      if (script_.empty()) {
        continue;
      }
      Step step = std::move(script_.front());
      script_.pop_front();
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

 private:
  struct Step {
    std::optional<X509SVIDResponse> message;
    grpc::Status status;
  };

  void push(Step step) {
    {
      std::lock_guard lock(mutex_);
      script_.push_back(std::move(step));
    }
    cv_.notify_all();
  }

  const std::string path_;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<int> calls_{0};
  std::atomic<int> header_rejections_{0};
  std::atomic<int> open_streams_{0};
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Step> script_;             // guarded by mutex_
  std::optional<grpc::Status> reject_;  // guarded by mutex_
  bool shutting_down_ = false;          // guarded by mutex_
};

}  // namespace spiffe_tunnel::workload::testing
