#pragma once
// Helpers shared by the workload tests that run a WorkloadApiSource against FakeWorkloadApi: a
// temporary socket directory, a recorder of what the source delivers, and a small trust domain
// with responses built from it. Every helper fails the running test (REQUIRE) instead of
// returning an error.

#include <chrono>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"
#include "spiffe_tunnel/workload/workload_api_source.h"
#include "test_support/temp_dir.h"
#include "test_support/wait.h"
#include "workload/fake_workload_api.h"
#include "workload.grpc.pb.h"
#include "workload.pb.h"

namespace spiffe_tunnel::workload::testing {

using spiffe::testing::der_of;
using spiffe::testing::make_root;
using spiffe::testing::make_svid;
using spiffe::testing::pkcs8_der_of;
using spiffe::testing::td_of;
using std::chrono::milliseconds;


inline bool eventually(const std::function<bool()>& pred,
                       milliseconds limit = spiffe_tunnel::testing::kWaitTimeout) {
  return spiffe_tunnel::testing::wait_until(pred, limit);
}

using spiffe_tunnel::testing::TempDir;

// Where the fake agent of a test listens, inside the test's TempDir.
inline std::string agent_socket(const TempDir& dir) { return dir.path("agent.sock"); }

// Collects what the source delivers; read it only through the accessors.
class Recorder {
 public:
  workload::SourceCallbacks callbacks() {
    return {
        .on_update =
            [this](workload::X509Context ctx) {
              std::lock_guard lock(mutex_);
              updates_.push_back(std::move(ctx));
            },
        .on_revoked =
            [this](const std::string& reason) {
              std::lock_guard lock(mutex_);
              revocations_.push_back(reason);
            },
    };
  }
  size_t updates() const {
    std::lock_guard lock(mutex_);
    return updates_.size();
  }
  size_t revocations() const {
    std::lock_guard lock(mutex_);
    return revocations_.size();
  }
  workload::X509Context update(size_t i) const {
    std::lock_guard lock(mutex_);
    return updates_.at(i);
  }
  std::string revocation(size_t i) const {
    std::lock_guard lock(mutex_);
    return revocations_.at(i);
  }
  workload::X509Context last() const {
    std::lock_guard lock(mutex_);
    return updates_.back();
  }
  bool wait_updates(size_t n) const {
    return eventually([&] { return updates() >= n; });
  }
  // Waits until the newest update satisfies `pred`.
  bool wait_last(const std::function<bool(const workload::X509Context&)>& pred) const {
    return eventually([&] {
      std::lock_guard lock(mutex_);
      return !updates_.empty() && pred(updates_.back());
    });
  }

 private:
  mutable std::mutex mutex_;
  std::vector<workload::X509Context> updates_;
  std::vector<std::string> revocations_;
};

inline X509SVID entry_of(const spiffe::X509Svid& svid, const spiffe::Issuer& root,
                  const std::string& hint = "") {
  X509SVID e;
  e.set_spiffe_id(svid.id.str());
  e.set_x509_svid(der_of(svid.chain));
  e.set_x509_svid_key(pkcs8_der_of(svid.key.get()));
  e.set_bundle(der_of(root.certificate()));
  e.set_hint(hint);
  return e;
}

// A small trust domain with one workload SVID, and responses built from it.
struct Agent {
  spiffe::Issuer root = make_root("a.test");
  spiffe::X509Svid web = make_svid(root, "spiffe://a.test/web");
  spiffe::X509Svid db = make_svid(root, "spiffe://a.test/db");

  X509SVIDResponse response_for(const spiffe::X509Svid& svid) const {
    X509SVIDResponse r;
    *r.add_svids() = entry_of(svid, root);
    return r;
  }
};

inline std::unique_ptr<WorkloadApiSource> make_source(const std::string& address) {
  auto source = WorkloadApiSource::create(
      {.address = address, .initial_backoff = milliseconds(20), .max_backoff = milliseconds(100)});
  INFO((source ? "" : source.error().message));
  REQUIRE(source.ok());
  return std::move(*source);
}

// The arrangement most source tests share: a fake agent on a fresh socket, a PKI (`Agent` or a
// subclass), and a recorder. start_source() points a WorkloadApiSource at the fake and starts it;
// it is stopped, if still running, when the test ends.
template <typename Pki = Agent>
struct SourceFixture {
  TempDir dir;
  FakeWorkloadApi fake{agent_socket(dir)};
  Pki agent;
  Recorder rec;
  std::unique_ptr<WorkloadApiSource> source;

  void start_source() {
    source = make_source(fake.address());
    source->start(rec.callbacks());
  }
};

inline std::string leaf_id(const workload::X509Context& ctx, size_t i = 0) {
  return ctx.svids.at(i)->id.str();
}


// The trust domain names of the context's bundles, sorted: "a.test,b.test".
inline std::string trust_domains_of(const workload::X509Context& ctx) {
  std::string out;
  for (const auto& td : ctx.bundles.trust_domains()) {
    out += (out.empty() ? "" : ",") + td.name();
  }
  return out;
}

// An X509BundlesResponse mapping each key to the certificates of its issuers.
inline X509BundlesResponse bundles_response(
    std::initializer_list<std::pair<std::string, std::vector<const spiffe::Issuer*>>> entries) {
  X509BundlesResponse r;
  for (const auto& [key, issuers] : entries) {
    std::string der;
    for (const auto* issuer : issuers) {
      der += der_of(issuer->certificate());
    }
    (*r.mutable_bundles())[key] = der;
  }
  return r;
}

// True when the context's bundle for `td` holds exactly the certificates of `issuers`.
inline bool bundle_is(const workload::X509Context& ctx, std::string_view td,
                      std::initializer_list<const spiffe::Issuer*> issuers) {
  const auto* bundle = ctx.bundles.find(td_of(td));
  if (bundle == nullptr || bundle->authorities().size() != issuers.size()) {
    return false;
  }
  size_t i = 0;
  for (const auto* issuer : issuers) {
    if (X509_cmp(bundle->authorities()[i++].get(), issuer->certificate()) != 0) {
      return false;
    }
  }
  return true;
}

// One raw call to the Workload API at `socket`, carrying `headers` copies of the security header
// set to `value`: whether a first message arrived, and the call's final status. `Response` and
// `rpc` pick the stream, e.g. <X509SVIDResponse>(&Stub::FetchX509SVID, X509SVIDRequest()).
template <typename Response, typename Rpc, typename Request>
std::pair<bool, grpc::StatusCode> call_with_headers(const std::string& socket, int headers,
                                                    const std::string& value, Rpc rpc,
                                                    const Request& request) {
  auto stub = SpiffeWorkloadAPI::NewStub(
      grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  for (int i = 0; i < headers; ++i) {
    ctx.AddMetadata("workload.spiffe.io", value);
  }
  auto reader = ((*stub).*rpc)(&ctx, request);
  Response r;
  const bool got = reader->Read(&r);
  const grpc::Status status = reader->Finish();
  return {got, status.error_code()};
}

}  // namespace spiffe_tunnel::workload::testing
