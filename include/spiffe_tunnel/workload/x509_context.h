#pragma once
// X509Context: what an identity source delivers each time something changes -- every SVID (first
// = default) and the bundle of every trusted trust domain. Always complete, never a delta.
// IdentitySource: the interface the app wires to the identity store.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "spiffe_tunnel/spiffe/bundle.h"
#include "spiffe_tunnel/spiffe/x509_svid.h"

namespace spiffe_tunnel::workload {

struct X509Context {
  std::vector<std::shared_ptr<const spiffe::X509Svid>> svids;
  spiffe::BundleSet bundles;
};

// Why a source has delivered nothing (yet, or since it lost its identity), for callers that
// report it, such as wait-ready.
struct SourceFailure {
  enum class Kind {
    kUnreachable,  // no connection to the Workload API (gRPC Unavailable)
    kNoIdentity,   // the agent answered but issued nothing to this workload (PermissionDenied)
    kOther,        // anything else: another gRPC status, identity files that do not load
  };
  Kind kind = Kind::kOther;
  std::string detail;  // "Unavailable: failed to connect to all addresses; ..."
};

// Callbacks run on a thread of the source, never two at once, and must not block or call stop().
struct SourceCallbacks {
  std::function<void(X509Context)> on_update;
  // The source lost its identities for good (e.g. Workload API PermissionDenied mid-stream).
  std::function<void(const std::string& reason)> on_revoked;
  // An attempt failed (a Workload API stream ended, identity files did not load); optional.
  std::function<void(const SourceFailure& failure)> on_failure;
};

class IdentitySource {
 public:
  virtual ~IdentitySource() = default;
  // Starts delivering; the first on_update may come before start() returns.
  virtual void start(SourceCallbacks callbacks) = 0;
  // Stops the source's thread. Safe to call twice.
  virtual void stop() = 0;
  // "files /etc/svid.pem" or "workload-api unix:///run/spire/agent.sock", for logs.
  virtual std::string describe() const = 0;
};

}  // namespace spiffe_tunnel::workload
