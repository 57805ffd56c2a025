#pragma once
// ExpiryWatch: keeps the identity store from handing out SVIDs that have expired. A source that
// loses its agent leaves its last snapshot in the store, so tunnels keep working through an agent
// restart; the watch warns once per snapshot when an SVID nears expiry without renewal, and
// withdraws the snapshot once its earliest SVID has expired, so new handshakes are refused until
// the source publishes a fresh one.
//
// Writes to the store go through the watch (publish(), withdraw()), so that an expiry withdraw
// can never overwrite a fresh snapshot published at the same moment. Any thread may call any
// method; an internal mutex serializes them.

#include <chrono>
#include <memory>
#include <mutex>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/identity/identity_store.h"

namespace spiffe_tunnel::identity {

struct ExpiryWatchOptions {
  // Warn when less than this fraction of an SVID's lifetime remains. SPIRE renews SVIDs at half
  // their lifetime, so while the agent is reachable this never fires, even for short-lived SVIDs.
  double warn_fraction = 0.2;
};

class ExpiryWatch {
 public:
  // `store` and `clock` are borrowed and must outlive the watch.
  ExpiryWatch(IdentityStore& store, const base::Clock& clock, ExpiryWatchOptions options = {});

  // Publishes a fresh snapshot to the store (the source's on_update).
  void publish(std::shared_ptr<const Snapshot> snapshot);
  // Withdraws the current snapshot (the source's on_revoked).
  void withdraw();

  // Looks at the store's current snapshot at the clock's now: warns (once per snapshot) when an
  // SVID has less than warn_fraction of its lifetime left; withdraws the snapshot once the
  // earliest SVID has expired. Returns true when it withdrew. Cheap; call it periodically.
  bool check();

 private:
  IdentityStore& store_;
  const base::Clock& clock_;
  const ExpiryWatchOptions options_;
  std::mutex mutex_;
  std::shared_ptr<const Snapshot> warned_;  // guarded by mutex_; the snapshot last warned about
};

}  // namespace spiffe_tunnel::identity
