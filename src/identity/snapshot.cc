#include "spiffe_tunnel/identity/snapshot.h"

namespace spiffe_tunnel::identity {

std::chrono::system_clock::time_point Snapshot::earliest_expiry() const {
  auto t = std::chrono::system_clock::time_point::max();
  for (const auto& s : svids) {
    t = std::min(t, s->not_after());
  }
  return t;
}

base::Result<std::shared_ptr<const spiffe::X509Svid>> SvidSelector::select(
    const Snapshot& snapshot) const {
  if (snapshot.svids.empty()) {
    return base::make_error("the identity source holds no SVID");
  }
  if (!id && !hint) {
    return snapshot.svids.front();
  }
  for (const auto& s : snapshot.svids) {
    if (id && s->id == *id) {
      return s;
    }
    if (hint && !hint->empty() && s->hint == *hint) {
      return s;
    }
  }
  std::string held;
  for (const auto& s : snapshot.svids) {
    held += (held.empty() ? "" : ", ") + s->id.str() + (s->hint.empty() ? "" : " (hint " + s->hint + ")");
  }
  return base::make_error("no SVID " + describe() + " is held; the identity source has: " + held);
}

std::string SvidSelector::describe() const {
  if (id) {
    return "with SPIFFE ID " + id->str();
  }
  if (hint) {
    return "with hint \"" + *hint + "\"";
  }
  return "(default: the first)";
}

}  // namespace spiffe_tunnel::identity
