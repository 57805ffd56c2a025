#include "spiffe_tunnel/spiffe/peer_verifier.h"

#include <string>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include "spiffe_tunnel/spiffe/x509_svid.h"
#include "spiffe/describe.h"

namespace spiffe_tunnel::spiffe {
namespace {

PeerVerification reject(Rejection why, std::optional<SpiffeId> id, std::string detail) {
  return PeerVerification{why, std::move(id), std::move(detail)};
}

std::string peer_name(const SpiffeId& id) {
  return "peer " + id.str();
}

bool below_security_level(int err) {
  return err == X509_V_ERR_EE_KEY_TOO_SMALL || err == X509_V_ERR_CA_KEY_TOO_SMALL ||
         err == X509_V_ERR_CA_MD_TOO_WEAK;
}

// Runs RFC 5280 path validation of `leaf` against `bundle` alone. Returns kNone on success and
// fills `chain` with the built chain (leaf first, trust anchor last).
PeerVerification verify_path(X509* leaf, STACK_OF(X509) * intermediates, const Bundle& bundle,
                             const SpiffeId& id, std::chrono::system_clock::time_point now,
                             const VerifyParams& params, base::X509StackPtr& chain) {
  const std::string who = peer_name(id);
  base::X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), bundle.store(), leaf, intermediates) != 1) {
    return reject(Rejection::kChainInvalid, id,
                  who + ": cannot set up chain verification: " + base::drain_openssl_errors());
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  // set_time also sets X509_V_FLAG_USE_CHECK_TIME, so validity is judged at `now`, not the clock.
  X509_VERIFY_PARAM_set_time(param, std::chrono::system_clock::to_time_t(now));
  // Every certificate of the bundle is a trust anchor, as in go-spiffe (Go's x509.Verify treats
  // every pool member as a root); a bundle may legitimately hold a non-self-signed CA.
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN | params.flags);
  // A fresh context has auth level -1, which checks no key size or digest at all; the TLS stack's
  // own level (SECLEVEL) must hold for the peer's chain as it does for everything else.
  X509_VERIFY_PARAM_set_auth_level(param, params.security_level);
  if (params.max_depth >= 0) {
    X509_VERIFY_PARAM_set_depth(param, params.max_depth);
  }
  // No purpose is set: OpenSSL's sslclient/sslserver purposes would refuse a leaf
  // whose EKU lacks one role, while check_leaf_rules applies the SPIFFE EKU rule for both roles.

  const int rc = X509_verify_cert(ctx.get());
  if (rc != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    const int depth = X509_STORE_CTX_get_error_depth(ctx.get());
    const X509* bad = X509_STORE_CTX_get_current_cert(ctx.get());
    std::string where = " at depth " + std::to_string(depth);
    if (bad != nullptr) {
      where += " (" + describe(bad) + ")";
    }
    const std::string queue = base::drain_openssl_errors();
    if (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID) {
      return reject(Rejection::kExpired, id,
                    who + ": certificate" + where + " " +
                        (err == X509_V_ERR_CERT_HAS_EXPIRED ? "has expired" : "is not yet valid"));
    }
    std::string reason = err != X509_V_OK ? X509_verify_cert_error_string(err)
                                          : "internal error: " + queue;
    if (below_security_level(err)) {
      reason += " for security level " + std::to_string(params.security_level);
    }
    return reject(Rejection::kChainInvalid, id,
                  who + ": certificate chain does not verify against the bundle of trust " +
                      "domain \"" + id.trust_domain().name() + "\": " + reason + where);
  }
  chain.reset(X509_STORE_CTX_get1_chain(ctx.get()));
  return reject(Rejection::kNone, id, "");
}

}  // namespace

VerifyParams VerifyParams::from(const X509_VERIFY_PARAM* param) {
  VerifyParams out;
  if (param == nullptr) {
    return out;
  }
  if (const int level = X509_VERIFY_PARAM_get_auth_level(param); level >= 0) {
    out.security_level = level;
  }
  out.max_depth = X509_VERIFY_PARAM_get_depth(param);
  // The time is the verifier's own argument, and a partial chain is always allowed (see
  // verify_path); every other flag is carried as set.
  out.flags = X509_VERIFY_PARAM_get_flags(param) & ~static_cast<unsigned long>(
                  X509_V_FLAG_USE_CHECK_TIME | X509_V_FLAG_PARTIAL_CHAIN);
  return out;
}

std::string_view rejection_label(Rejection r) {
  switch (r) {
    case Rejection::kNone:
      return "none";
    case Rejection::kNoCertificate:
      return "no_certificate";
    case Rejection::kNotSvid:
      return "not_svid";
    case Rejection::kUntrustedDomain:
      return "untrusted_domain";
    case Rejection::kExpired:
      return "expired";
    case Rejection::kChainInvalid:
      return "chain_invalid";
    case Rejection::kLeafRules:
      return "leaf_rules";
    case Rejection::kNotAuthorized:
      return "not_authorized";
  }
  return "unknown";
}

PeerVerification verify_peer_chain(X509* leaf, STACK_OF(X509) * intermediates,
                                   const BundleSet& bundles,
                                   std::chrono::system_clock::time_point now,
                                   const VerifyParams& params) {
  if (leaf == nullptr) {
    return reject(Rejection::kNoCertificate, std::nullopt, "peer sent no certificate");
  }
  auto id = spiffe_id_of(leaf);
  if (!id.ok()) {
    return reject(Rejection::kNotSvid, std::nullopt, "peer " + id.error().message);
  }
  const std::string who = peer_name(*id);
  if (id->is_root()) {
    return reject(Rejection::kNotSvid, *id,
                  who + " is a trust domain ID without a path, which cannot identify a workload");
  }

  // X509-SVID.md §5 / Federation §7.3: trust is decided per trust domain. Handing OpenSSL a pool
  // of several domains' roots would let a CA of domain B vouch for an ID in domain A.
  const TrustDomain& td = id->trust_domain();
  const Bundle* bundle = bundles.find(td);
  if (bundle == nullptr) {
    return reject(Rejection::kUntrustedDomain, *id,
                  who + ": no bundle is held for trust domain \"" + td.name() + "\"");
  }
  if (bundle->authorities().empty()) {
    return reject(Rejection::kUntrustedDomain, *id,
                  who + ": the bundle of trust domain \"" + td.name() +
                      "\" is empty (all its authorities are revoked), so nothing from it is "
                      "trusted");
  }

  base::X509StackPtr chain;
  PeerVerification path = verify_path(leaf, intermediates, *bundle, *id, now, params, chain);
  if (!path.ok()) {
    return path;
  }
  // OpenSSL accepts a CA:TRUE intermediate without keyUsage; X509-SVID.md §4.3 does not. The
  // last element is the trust anchor from the bundle, which the operator chose to trust as is.
  const int n = sk_X509_num(chain.get());
  for (int i = 1; i < n - 1; ++i) {
    const X509* ca = sk_X509_value(chain.get(), i);
    auto st = check_signing_rules(ca);
    if (st.ok()) {
      st = check_signing_uri_sans(ca, td);
    }
    if (!st.ok()) {
      return reject(Rejection::kChainInvalid, *id,
                    who + ": intermediate " + st.error().message);
    }
  }
  if (auto leaf_id = check_leaf_rules(leaf); !leaf_id.ok()) {
    return reject(Rejection::kLeafRules, *id, "peer " + leaf_id.error().message);
  }
  return reject(Rejection::kNone, std::move(*id), "");
}

}  // namespace spiffe_tunnel::spiffe
