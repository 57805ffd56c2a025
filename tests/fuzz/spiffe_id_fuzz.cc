// Fuzzes the SPIFFE ID, trust domain and ID pattern parsers with arbitrary text. Beyond "does
// not crash": an accepted ID must print back to text that parses to the same ID, its trust
// domain must parse on its own, and the pattern matcher must agree with itself on every ID it
// is given (an ID matches the pattern written as that ID).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "spiffe_tunnel/spiffe/id_pattern.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

using spiffe_tunnel::spiffe::IdPattern;
using spiffe_tunnel::spiffe::SpiffeId;
using spiffe_tunnel::spiffe::TrustDomain;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto td = TrustDomain::parse(text);
  auto id = SpiffeId::parse(text);
  if (id.ok()) {
    auto again = SpiffeId::parse(id->str());
    if (!again.ok() || !(*again == *id)) std::abort();
    if (!TrustDomain::parse(id->trust_domain().id_string()).ok()) std::abort();
    if (!td.ok() || !(*td == id->trust_domain())) std::abort();
    auto literal = IdPattern::parse(id->str());
    // A literal ID without glob characters must match itself.
    if (literal.ok() && id->str().find('*') == std::string_view::npos && !literal->matches(*id)) {
      std::abort();
    }
  }
  auto pattern = IdPattern::parse(text);
  if (pattern.ok()) {
    // The pattern against a fixed ID and against its own trust domain ID: only must not crash
    // (and must stay cheap: the ID is the peer's choice).
    static const SpiffeId kId = *SpiffeId::parse("spiffe://example.org/ns/prod/sa/kafka-broker");
    (void)pattern->matches(kId);
    if (td.ok()) {
      auto td_id = SpiffeId::parse(td->id_string());
      if (td_id.ok()) (void)pattern->matches(*td_id);
    }
  }
  return 0;
}
