#pragma once
// Turns one FetchX509SVID response into an X509Context, all or nothing (SPIFFE.md §4.3-4.5).
// Private to the workload module; a pure function that any thread may call.

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/workload/x509_context.h"
#include "workload.pb.h"

namespace spiffe_tunnel::workload {

// Every SVID in order (a later SVID whose non-empty hint was already seen is skipped), the bundle
// of each SVID's trust domain, then every federated bundle under the trust domain of its key.
// Fails, naming the entry and the reason, when there is no SVID, a mandatory field is empty, or
// any certificate, key or bundle does not parse or check out. Never puts key bytes in errors.
base::Result<X509Context> parse_x509_svid_response(const X509SVIDResponse& response);

}  // namespace spiffe_tunnel::workload
