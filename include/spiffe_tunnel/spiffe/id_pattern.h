#pragma once
// IdPattern: a SPIFFE ID pattern, parsed once and matched against verified peer IDs. Immutable;
// any thread may call matches().
//
// Syntax: "spiffe://<trust-domain>/<segment>/..." where the trust domain is literal and each path
// segment is either literal, "*" (exactly one segment), a glob within one segment such as
// "kafka-*", or "**" (any number of segments, including none). Examples:
//   spiffe://td/ns/*/sa/kafka   matches spiffe://td/ns/prod/sa/kafka
//   spiffe://td/ns/prod/**      matches spiffe://td/ns/prod and everything below it
//   spiffe://td/**              matches every ID in td (same as allowing the trust domain)
// A pattern of only a trust domain ("spiffe://td") matches exactly the trust domain ID.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::spiffe {

class IdPattern {
 public:
  // Errors quote the pattern and say which rule it breaks.
  static base::Result<IdPattern> parse(std::string_view text);

  // Costs O(pattern segments x ID segments) whatever the number of "**"s: the peer chooses `id`.
  bool matches(const SpiffeId& id) const;
  // The pattern as written.
  const std::string& text() const { return text_; }

  // Two patterns are equal when they were written the same (the text determines the rest).
  friend bool operator==(const IdPattern& a, const IdPattern& b) { return a.text_ == b.text_; }

 private:
  IdPattern() = default;
  std::string text_;
  std::optional<TrustDomain> td_;
  std::vector<std::string> segments_;
};

}  // namespace spiffe_tunnel::spiffe
