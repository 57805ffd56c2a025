#include "workload/x509_responses.h"

#include <google/protobuf/map.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

namespace spiffe_tunnel::workload {
namespace {

std::string entry_name(int index, const X509SVID& s) {
  std::string name = "SVID #" + std::to_string(index + 1);
  if (!s.spiffe_id().empty()) {
    name += " (" + s.spiffe_id() + ")";
  }
  return name;
}

// Adds every entry of a "trust domain → concatenated DER" map to `out`; `what` names the map in
// errors ("federated bundle"). Protobuf maps have no order, so the keys are sorted: a trust domain
// given twice, as "td" and "spiffe://td", resolves the same way every time.
base::Result<void> put_bundle_map(const google::protobuf::Map<std::string, std::string>& map,
                                  const std::string& what, BundleMap& out) {
  std::vector<std::string> keys;
  keys.reserve(map.size());
  for (const auto& [key, der] : map) {
    keys.push_back(key);
  }
  std::sort(keys.begin(), keys.end());
  for (const auto& key : keys) {
    auto td = spiffe::TrustDomain::parse(key);
    if (!td) {
      return td.error().wrap(what + " key \"" + key + "\"");
    }
    // An empty bundle is legal: that trust domain is simply not trusted now.
    auto bundle = spiffe::Bundle::from_der(*td, map.at(key));
    if (!bundle) {
      return bundle.error().wrap(what + " for " + td->name());
    }
    out[*td] = std::make_shared<const spiffe::Bundle>(std::move(*bundle));
  }
  return {};
}

}  // namespace

base::Result<X509SvidMessage> parse_x509_svid_response(const X509SVIDResponse& response) {
  if (response.svids_size() == 0) {
    return base::make_error("the response holds no SVID (the Workload API must send at least one)");
  }
  X509SvidMessage message;
  std::set<std::string> hints;
  for (int i = 0; i < response.svids_size(); ++i) {
    const X509SVID& s = response.svids(i);
    const std::string name = entry_name(i, s);
    // Spec §5.2.1: servers keep non-empty hints unique; if not, the first one wins.
    if (!s.hint().empty() && !hints.insert(s.hint()).second) {
      spdlog::warn("workload-api: skipping {}: its hint \"{}\" repeats an earlier SVID's", name,
                   s.hint());
      continue;
    }
    if (s.spiffe_id().empty() || s.x509_svid().empty() || s.x509_svid_key().empty() ||
        s.bundle().empty()) {
      return base::make_error(name + " lacks a mandatory field (spiffe_id, x509_svid, " +
                              "x509_svid_key or bundle is empty)");
    }
    auto svid = spiffe::X509Svid::from_der(s.x509_svid(), s.x509_svid_key(), s.hint());
    if (!svid) {
      return svid.error().wrap(name);
    }
    if (svid->id.str() != s.spiffe_id()) {
      return base::make_error(name + ": the certificate holds " + svid->id.str() +
                              ", not the SPIFFE ID the response names");
    }
    auto bundle = spiffe::Bundle::from_der(svid->id.trust_domain(), s.bundle());
    if (!bundle) {
      return bundle.error().wrap("bundle of " + name);
    }
    const spiffe::TrustDomain td = bundle->trust_domain();
    message.bundles[td] = std::make_shared<const spiffe::Bundle>(std::move(*bundle));
    message.svids.push_back(std::make_shared<const spiffe::X509Svid>(std::move(*svid)));
  }
  // go-spiffe parseX509Bundles: federated entries come last and replace an SVID's bundle for the
  // same trust domain.
  if (auto put = put_bundle_map(response.federated_bundles(), "federated bundle", message.bundles);
      !put) {
    return put.error();
  }
  return message;
}

base::Result<BundleMap> parse_x509_bundles_response(const X509BundlesResponse& response) {
  if (response.bundles().empty()) {
    return base::make_error(
        "the response holds no bundle (FetchX509Bundles must send at least the agent's own trust "
        "domain)");
  }
  BundleMap bundles;
  if (auto put = put_bundle_map(response.bundles(), "bundle", bundles); !put) {
    return put.error();
  }
  return bundles;
}

}  // namespace spiffe_tunnel::workload
