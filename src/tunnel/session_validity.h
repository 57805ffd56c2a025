#pragma once
// Whether an established session may go on: its peer's verified chain still verifies against the
// current bundle of the peer's trust domain and has not reached its notAfter, the SVID the session
// presents is still held, and the session is younger than max_connection_age. Pure functions of
// their inputs, so that sessions and tests ask the same question; any thread.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "spiffe_tunnel/identity/snapshot.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"
#include "spiffe_tunnel/tls/verified_chain.h"

namespace spiffe_tunnel::tunnel {

// Why an established session is ended by the daemon; the label is the reason label of
// spiffe_tunnel_sessions_closed_total and the JSON log's `reason`.
enum class EndReason { kNone, kPeerExpired, kPeerUntrusted, kLocalIdentityLost, kMaxConnectionAge };
std::string_view end_reason_label(EndReason r);

struct Verdict {
  EndReason reason = EndReason::kNone;
  std::string detail;  // one sentence for the log, "" when the session may go on
  // When to look again without a change (a certificate's notAfter, the age limit); max() for
  // never. Meaningful only when the session may go on.
  std::chrono::system_clock::time_point next_check = std::chrono::system_clock::time_point::max();
  bool ok() const { return reason == EndReason::kNone; }
};

// What one session was established with.
struct SessionFacts {
  const tls::VerifiedChain* peer_chain = nullptr;  // the verified chain of the peer; never null
  const spiffe::SpiffeId* local_id = nullptr;      // the SVID's ID the session presented
  // When the session was accepted, and its max_connection_age (nullopt: no limit), on the same
  // clock as `now`.
  std::chrono::system_clock::time_point accepted;
  std::optional<std::chrono::milliseconds> max_age;
  // The snapshot whose bundles the handshake verified the chain against (its TLS context's).
  // While it is still the current one, only the chain's notAfter can have changed the verdict,
  // and the verification itself is not repeated.
  const identity::Snapshot* verified_with = nullptr;
};

// The session's standing at `now` against `current` (the identity store's newest snapshot; null
// when it was withdrawn). Checks, in order: the age limit, the identity this side presents, the
// peer chain's notAfter, the peer chain against the current bundles (unless those are the ones
// the handshake verified it against).
Verdict check_session(const SessionFacts& facts, const identity::Snapshot* current,
                      std::chrono::system_clock::time_point now);

}  // namespace spiffe_tunnel::tunnel
