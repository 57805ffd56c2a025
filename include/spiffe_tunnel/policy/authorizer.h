#pragma once
// Authorization of a verified peer SPIFFE ID, the step after chain verification. An Authorizer is
// immutable after construction and may be called from any thread. ID patterns are
// spiffe::IdPattern (see spiffe_tunnel/spiffe/id_pattern.h for their syntax).

#include <memory>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/spiffe/id_pattern.h"
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

// Allows a peer if its ID is listed, its trust domain is listed, or it matches a pattern; denies
// everything else. An empty rule set denies everything unless `allow_any_verified` is set, in
// which case any peer that passed chain verification is allowed.
class AllowListAuthorizer final : public Authorizer {
 public:
  AllowListAuthorizer(std::vector<spiffe::SpiffeId> ids, std::vector<spiffe::TrustDomain> tds,
                      std::vector<spiffe::IdPattern> patterns, bool allow_any_verified = false);

  Decision authorize(const spiffe::SpiffeId& peer) const override;
  std::string describe() const override;

 private:
  std::vector<spiffe::SpiffeId> ids_;
  std::vector<spiffe::TrustDomain> tds_;
  std::vector<spiffe::IdPattern> patterns_;
  bool allow_any_verified_;
};

}  // namespace spiffe_tunnel::policy
