#pragma once
// Turns one Workload API response -- FetchX509SVID or FetchX509Bundles -- into values, all or
// nothing (SPIFFE.md §4.3-4.6). Private to the workload module; pure functions that any thread
// may call.

#include <map>
#include <memory>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/bundle.h"
#include "spiffe_tunnel/spiffe/x509_svid.h"
#include "workload.pb.h"

namespace spiffe_tunnel::workload {

// One bundle per trust domain, as one response delivered them.
using BundleMap = std::map<spiffe::TrustDomain, std::shared_ptr<const spiffe::Bundle>>;

// What one X509SVIDResponse carries.
struct X509SvidMessage {
  std::vector<std::shared_ptr<const spiffe::X509Svid>> svids;  // first = default; never empty
  BundleMap bundles;
};

// Every SVID in order (a later SVID whose non-empty hint was already seen is skipped), the bundle
// of each SVID's trust domain, then every federated bundle under the trust domain of its key.
// Fails, naming the entry and the reason, when there is no SVID, a mandatory field is empty, or
// any certificate, key or bundle does not parse or check out. Never puts key bytes in errors.
base::Result<X509SvidMessage> parse_x509_svid_response(const X509SVIDResponse& response);

// Every entry of `bundles` under the trust domain of its key ("spiffe://td" or "td"). Fails,
// naming the entry, when a key is not a trust domain or a bundle does not parse, and when the map
// is empty: the server must send at least its own trust domain (SPIFFE.md §4.6).
base::Result<BundleMap> parse_x509_bundles_response(const X509BundlesResponse& response);

}  // namespace spiffe_tunnel::workload
