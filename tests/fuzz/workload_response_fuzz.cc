// Fuzzes what the daemon does with a Workload API message: protobuf bytes → X509SVIDResponse
// (and the same bytes as an X509BundlesResponse) → parsed SVIDs and bundles, all or nothing →
// the X509ContextMerger → the identity snapshot the TLS contexts are built from. A message the
// parser accepts must give a snapshot with at least one SVID, each holding its key and leaf.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "spiffe_tunnel/identity/snapshot.h"
#include "workload/x509_context_merger.h"
#include "workload/x509_responses.h"

using namespace spiffe_tunnel;

namespace {

void check_snapshot(const std::optional<workload::X509Context>& context) {
  if (!context) return;
  if (context->svids.empty()) std::abort();
  identity::Snapshot snapshot;
  snapshot.svids = context->svids;
  snapshot.bundles = context->bundles;
  snapshot.source = "fuzz";
  for (const auto& svid : snapshot.svids) {
    if (svid == nullptr || svid->chain.empty() || svid->key == nullptr) std::abort();
  }
  (void)snapshot.bundles.trust_domains();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  workload::X509ContextMerger merger;
  X509SVIDResponse svids;
  if (svids.ParseFromArray(data, static_cast<int>(size))) {
    auto message = workload::parse_x509_svid_response(svids);
    if (message.ok()) {
      if (message->svids.empty()) std::abort();
      check_snapshot(merger.take_svids(std::move(*message)));
    } else if (message.error().message.empty()) {
      std::abort();
    }
  }
  X509BundlesResponse bundles;
  if (bundles.ParseFromArray(data, static_cast<int>(size))) {
    auto parsed = workload::parse_x509_bundles_response(bundles);
    if (parsed.ok()) check_snapshot(merger.take_bundles(std::move(*parsed)));
  }
  return 0;
}
