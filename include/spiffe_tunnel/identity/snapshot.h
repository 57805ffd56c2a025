#pragma once
// Snapshot: the complete identity state at one moment -- every SVID this workload may present
// (in the order the source delivered them; the first is the default) and the bundle of every
// trust domain it trusts, own and federated. Built whole by an identity source and never modified
// afterwards; shared across threads as shared_ptr<const Snapshot>.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/bundle.h"
#include "spiffe_tunnel/spiffe/x509_svid.h"

namespace spiffe_tunnel::identity {

struct Snapshot {
  std::vector<std::shared_ptr<const spiffe::X509Svid>> svids;
  spiffe::BundleSet bundles;
  std::string source;  // e.g. "files" or "workload-api unix:///run/spire/agent.sock"

  // The earliest notAfter among the SVIDs (time_point::max() if none).
  std::chrono::system_clock::time_point earliest_expiry() const;
};

// Which SVID a tunnel presents: by SPIFFE ID, by Workload API hint, or the default (first).
struct SvidSelector {
  std::optional<spiffe::SpiffeId> id;
  std::optional<std::string> hint;

  // The selected SVID, or an error naming what was wanted and what the snapshot holds.
  base::Result<std::shared_ptr<const spiffe::X509Svid>> select(const Snapshot& snapshot) const;
  std::string describe() const;
};

}  // namespace spiffe_tunnel::identity
