#pragma once
// Holds the newest identity snapshot and hands it to handshakes. Any thread may call current();
// identity sources call publish() / withdraw(). A published snapshot is never modified: rotation
// builds a new one and swaps the pointer, so a handshake copies the pointer once and established
// sessions keep whatever they started with. Subscribers are called on the publishing thread,
// after the swap, and must not block.

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "spiffe_tunnel/identity/snapshot.h"

namespace spiffe_tunnel::identity {

class IdentityStore {
 public:
  using Listener = std::function<void(const std::shared_ptr<const Snapshot>&)>;

  // The newest snapshot, or nullptr before the first one (and after withdraw()).
  std::shared_ptr<const Snapshot> current() const;

  // Replaces the current snapshot and notifies listeners.
  void publish(std::shared_ptr<const Snapshot> snapshot);

  // Drops the current snapshot: the identities were revoked (Workload API PermissionDenied) or
  // expired. New handshakes are refused until the next publish().
  void withdraw();

  // Number of publish() calls so far.
  uint64_t generation() const;

  void subscribe(Listener listener);

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const Snapshot> current_;  // guarded by mutex_
  uint64_t generation_ = 0;                  // guarded by mutex_
  std::vector<Listener> listeners_;          // guarded by mutex_
};

}  // namespace spiffe_tunnel::identity
