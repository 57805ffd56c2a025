#include "spiffe_tunnel/identity/identity_store.h"

namespace spiffe_tunnel::identity {

std::shared_ptr<const Snapshot> IdentityStore::current() const {
  std::lock_guard lock(mutex_);
  return current_;
}

void IdentityStore::publish(std::shared_ptr<const Snapshot> snapshot) {
  std::vector<Listener> listeners;
  {
    std::lock_guard lock(mutex_);
    current_ = snapshot;
    ++generation_;
    listeners = listeners_;
  }
  for (const auto& l : listeners) {
    l(snapshot);
  }
}

void IdentityStore::withdraw() { publish(nullptr); }

uint64_t IdentityStore::generation() const {
  std::lock_guard lock(mutex_);
  return generation_;
}

void IdentityStore::subscribe(Listener listener) {
  std::lock_guard lock(mutex_);
  listeners_.push_back(std::move(listener));
}

}  // namespace spiffe_tunnel::identity
