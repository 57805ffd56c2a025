#pragma once
// SPIFFE IDs and trust domains, parsed strictly per the SPIFFE-ID standard (§2): the literal
// lowercase prefix "spiffe://", a trust domain of [a-z0-9._-] (at most 255 bytes), an optional
// path of "/segment"s of [a-zA-Z0-9._-] (no empty, "." or ".." segments, no trailing slash), and
// at most 2048 bytes in all. Values are immutable and cheap to copy; any thread may use them.

#include <compare>
#include <string>
#include <string_view>

#include "spiffe_tunnel/base/result.h"

namespace spiffe_tunnel::spiffe {

class TrustDomain {
 public:
  // Accepts a bare name ("example.org") or a SPIFFE ID ("spiffe://example.org[/path]") and
  // returns its trust domain. Errors say which character or rule was wrong.
  static base::Result<TrustDomain> parse(std::string_view text);

  const std::string& name() const { return name_; }
  // "spiffe://<name>", the form used as key in Workload API bundle maps.
  std::string id_string() const { return "spiffe://" + name_; }

  auto operator<=>(const TrustDomain&) const = default;

 private:
  explicit TrustDomain(std::string name) : name_(std::move(name)) {}
  friend class SpiffeId;
  std::string name_;
};

class SpiffeId {
 public:
  static base::Result<SpiffeId> parse(std::string_view text);

  const TrustDomain& trust_domain() const { return trust_domain_; }
  // "" for a trust domain ID, else "/seg/seg".
  const std::string& path() const { return path_; }
  // True for "spiffe://td" (no path): valid as an ID, never as a leaf SVID identity.
  bool is_root() const { return path_.empty(); }
  std::string str() const { return trust_domain_.id_string() + path_; }

  auto operator<=>(const SpiffeId&) const = default;

 private:
  SpiffeId(TrustDomain td, std::string path) : trust_domain_(std::move(td)), path_(std::move(path)) {}
  TrustDomain trust_domain_;
  std::string path_;
};

}  // namespace spiffe_tunnel::spiffe
