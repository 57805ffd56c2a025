#include "session_validity.h"

#include <spdlog/fmt/chrono.h>
#include <spdlog/fmt/fmt.h>

namespace spiffe_tunnel::tunnel {
namespace {

using std::chrono::system_clock;

std::string utc(system_clock::time_point t) {
  return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}",
                     std::chrono::time_point_cast<std::chrono::seconds>(t));
}

// The local side: a held, unexpired SVID with the ID this session presented. A rotation to a new
// SVID of the same ID keeps the session; the entry deleted, the SVID revoked (the snapshot
// withdrawn) or expired without a replacement ends it. `until`: the latest such SVID's notAfter.
Verdict check_local(const spiffe::SpiffeId& id, const identity::Snapshot* current,
                    system_clock::time_point now, system_clock::time_point& until) {
  if (current == nullptr) {
    return {EndReason::kLocalIdentityLost,
            "the identity this tunnel presents (" + id.str() +
                ") was revoked or has expired; the identity source holds none"};
  }
  bool held = false;
  until = system_clock::time_point::min();
  for (const auto& svid : current->svids) {
    if (svid->id == id) {
      held = true;
      until = std::max(until, svid->not_after());
    }
  }
  if (!held) {
    return {EndReason::kLocalIdentityLost,
            "the SVID " + id.str() +
                " this session presents is no longer issued to this workload (registration "
                "entry deleted or revoked)"};
  }
  if (until <= now) {
    return {EndReason::kLocalIdentityLost,
            "the SVID " + id.str() + " this session presents expired at " + utc(until) +
                " and no replacement arrived"};
  }
  return {};
}

// The peer: its chain's own notAfter first (a rotated peer SVID does not extend it), then the
// same verifier as the handshake against the current bundle of its trust domain.
Verdict check_peer(const tls::VerifiedChain& chain, const identity::Snapshot& current,
                   const identity::Snapshot* verified_with, system_clock::time_point now) {
  if (chain.not_after() <= now) {
    return {EndReason::kPeerExpired,
            "the peer's certificate chain expired at " + utc(chain.not_after())};
  }
  if (&current == verified_with) {
    return {};  // the same bundles the handshake verified against, a moment ago
  }
  const spiffe::PeerVerification v = chain.verify(current.bundles, now);
  if (v.ok()) {
    return {};
  }
  if (v.rejection == spiffe::Rejection::kExpired) {
    return {EndReason::kPeerExpired, v.detail};
  }
  return {EndReason::kPeerUntrusted, "no longer trusted: " + v.detail};
}

}  // namespace

std::string_view end_reason_label(EndReason r) {
  switch (r) {
    case EndReason::kNone:
      return "";
    case EndReason::kPeerExpired:
      return "peer_expired";
    case EndReason::kPeerUntrusted:
      return "peer_untrusted";
    case EndReason::kLocalIdentityLost:
      return "local_identity_lost";
    case EndReason::kMaxConnectionAge:
      return "max_connection_age";
  }
  return "";
}

Verdict check_session(const SessionFacts& facts, const identity::Snapshot* current,
                      system_clock::time_point now) {
  auto next = system_clock::time_point::max();
  if (facts.max_age) {
    const system_clock::time_point limit = facts.accepted + *facts.max_age;
    if (limit <= now) {
      return {EndReason::kMaxConnectionAge,
              fmt::format("max_connection_age ({}s) reached", facts.max_age->count() / 1000.0)};
    }
    next = limit;
  }
  system_clock::time_point local_until;
  if (Verdict v = check_local(*facts.local_id, current, now, local_until); !v.ok()) {
    return v;
  }
  if (Verdict v = check_peer(*facts.peer_chain, *current, facts.verified_with, now); !v.ok()) {
    return v;
  }
  Verdict ok;
  ok.next_check = std::min({next, local_until, facts.peer_chain->not_after()});
  return ok;
}

}  // namespace spiffe_tunnel::tunnel
