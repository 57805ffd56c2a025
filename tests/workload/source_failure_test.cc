// SourceCallbacks::on_failure: what wait-ready reports when no identity comes.
#include <mutex>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/workload/files_source.h"
#include "workload/source_test_support.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::workload;
using namespace spiffe_tunnel::workload::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using Kind = SourceFailure::Kind;

namespace {

class FailureLog {
 public:
  SourceCallbacks callbacks() {
    return {.on_update = [](X509Context) {},
            .on_failure =
                [this](const SourceFailure& f) {
                  std::lock_guard lock(mutex_);
                  failures_.push_back(f);
                }};
  }
  // Waits for a failure of `kind` and returns its detail ("" when none came).
  std::string wait_for(Kind kind) {
    std::string detail;
    eventually([&] {
      std::lock_guard lock(mutex_);
      for (const auto& f : failures_) {
        if (f.kind == kind) {
          detail = f.detail;
          return true;
        }
      }
      return false;
    });
    return detail;
  }

 private:
  std::mutex mutex_;
  std::vector<SourceFailure> failures_;
};

}  // namespace

TEST_CASE("a Workload API source reports each failed attempt by kind") {
  TempDir dir;
  FailureLog log;
  auto source = make_source("unix://" + agent_socket(dir));
  source->start(log.callbacks());
  CHECK_THAT(log.wait_for(Kind::kUnreachable), StartsWith("Unavailable"));
  {
    FakeWorkloadApi fake(agent_socket(dir));
    fake.reject_calls_with(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "no identity issued"));
    CHECK(log.wait_for(Kind::kNoIdentity) == "PermissionDenied: no identity issued");
    fake.reject_calls_with(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not here"));
    CHECK(log.wait_for(Kind::kOther) == "Unimplemented: not here");
    source->stop();
  }
}

TEST_CASE("a files source reports identity files that do not load") {
  TempDir dir;
  FailureLog log;
  FilesSource source({.cert_file = dir.path("missing.pem"),
                      .key_file = dir.path("key.pem"),
                      .bundle_files = {{td_of("a.test"), dir.path("bundle.pem")}}});
  source.start(log.callbacks());
  CHECK_THAT(log.wait_for(Kind::kOther), Contains("missing.pem"));
  source.stop();
}
