#pragma once
// Authorization of a verified peer SPIFFE ID, the step after chain verification. An Authorizer is
// immutable after construction and may be called from any thread.
//
// Pattern syntax (IdPattern): "spiffe://<trust-domain>/<segment>/..." where the trust domain is
// literal and each path segment is either literal, "*" (exactly one segment), a glob within one
// segment such as "kafka-*", or "**" (any number of segments, including none). Examples:
//   spiffe://td/ns/*/sa/kafka   matches spiffe://td/ns/prod/sa/kafka
//   spiffe://td/ns/prod/**      matches spiffe://td/ns/prod and everything below it
//   spiffe://td/**              matches every ID in td (same as allowing the trust domain)

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::policy {

struct Decision {
  bool allowed = false;
  std::string reason;  // which rule allowed, or why nothing did

  static Decision allow(std::string why) { return {true, std::move(why)}; }
  static Decision deny(std::string why) { return {false, std::move(why)}; }
};

class Authorizer {
 public:
  virtual ~Authorizer() = default;
  virtual Decision authorize(const spiffe::SpiffeId& peer) const = 0;
  // One line for logs, e.g. "ids=[spiffe://a/x] trust_domains=[b] patterns=[]".
  virtual std::string describe() const = 0;
};

class IdPattern {
 public:
  static base::Result<IdPattern> parse(std::string_view text);
  bool matches(const spiffe::SpiffeId& id) const;
  const std::string& text() const { return text_; }

 private:
  IdPattern() = default;
  std::string text_;
  std::optional<spiffe::TrustDomain> td_;
  std::vector<std::string> segments_;
};

// Allows a peer if its ID is listed, its trust domain is listed, or it matches a pattern; denies
// everything else. An empty rule set denies everything unless `allow_any_verified` is set, in
// which case any peer that passed chain verification is allowed.
class AllowListAuthorizer final : public Authorizer {
 public:
  AllowListAuthorizer(std::vector<spiffe::SpiffeId> ids, std::vector<spiffe::TrustDomain> tds,
                      std::vector<IdPattern> patterns, bool allow_any_verified = false);

  Decision authorize(const spiffe::SpiffeId& peer) const override;
  std::string describe() const override;

 private:
  std::vector<spiffe::SpiffeId> ids_;
  std::vector<spiffe::TrustDomain> tds_;
  std::vector<IdPattern> patterns_;
  bool allow_any_verified_;
};

}  // namespace spiffe_tunnel::policy
