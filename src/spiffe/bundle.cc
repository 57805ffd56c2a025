#include "spiffe_tunnel/spiffe/bundle.h"

#include <cassert>
#include <climits>
#include <cstdlib>
#include <cstdio>
#include <string>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <nlohmann/json.hpp>

#include "spiffe_tunnel/spiffe/x509_svid.h"

namespace spiffe_tunnel::spiffe {
namespace {

using base::Error;
using base::Result;

std::string bundle_name(const TrustDomain& td) {
  return "bundle of trust domain \"" + td.name() + "\"";
}

// Decodes standard base64 (RFC 4648 §4, as x5c uses per RFC 7517 §4.7) into DER bytes.
Result<std::string> decode_base64(std::string_view text) {
  // EVP_DecodeBlock wants whole 4-char groups and counts '=' padding as zero bytes, so the
  // padding is checked here and trimmed from the output.
  if (text.empty() || text.size() % 4 != 0 || text.size() > INT_MAX) {
    return Error{"is not valid base64 (length " + std::to_string(text.size()) + ")"};
  }
  size_t padding = 0;
  if (text.back() == '=') {
    padding = text[text.size() - 2] == '=' ? 2 : 1;
  }
  for (size_t i = 0; i < text.size() - padding; ++i) {
    const char c = text[i];
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '+' || c == '/';
    if (!ok) {
      return Error{"is not valid base64 (unexpected character at offset " + std::to_string(i) +
                   ")"};
    }
  }
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0 || static_cast<size_t>(n) < padding) {
    ERR_clear_error();
    return Error{"is not valid base64"};
  }
  out.resize(static_cast<size_t>(n) - padding);
  return out;
}

// Reads the CA certificate of one "x509-svid" JWK (X509-SVID.md §6). Returns null when the JWK
// carries no x5c, which the spec says to skip rather than reject.
Result<base::X509Ptr> authority_of_jwk(const nlohmann::json& jwk, size_t index) {
  const std::string where = "keys[" + std::to_string(index) + "]";
  const auto x5c = jwk.find("x5c");
  if (x5c == jwk.end() || (x5c->is_array() && x5c->empty())) {
    return base::X509Ptr();
  }
  if (!x5c->is_array()) {
    return Error{where + ".x5c is not an array"};
  }
  // Only the first element counts: it holds the CA itself; anything after it is ignored.
  const nlohmann::json& first = x5c->front();
  if (!first.is_string()) {
    return Error{where + ".x5c[0] is not a string"};
  }
  auto der = decode_base64(first.get_ref<const std::string&>());
  if (!der.ok()) {
    return Error{where + ".x5c[0] " + der.error().message};
  }
  auto certs = parse_der_certificates(*der);
  if (!certs.ok()) {
    return certs.error().wrap(where + ".x5c[0]");
  }
  if (certs->size() != 1) {
    return Error{where + ".x5c[0] holds " + std::to_string(certs->size()) +
                 " certificates (exactly one expected)"};
  }
  return std::move(certs->front());
}

// A JWK contributes to the X.509 bundle only if it is for X.509-SVIDs and of a key type we know;
// unknown `use` or `kty` values are skipped so newer publishers do not break us (bundle spec §4).
bool is_x509_svid_jwk(const nlohmann::json& jwk) {
  const auto use = jwk.find("use");
  if (use == jwk.end() || !use->is_string() || *use != "x509-svid") {
    return false;
  }
  const auto kty = jwk.find("kty");
  if (kty == jwk.end() || !kty->is_string()) {
    return false;
  }
  return *kty == "EC" || *kty == "RSA" || *kty == "OKP";
}

}  // namespace

Bundle::Bundle(TrustDomain td, std::vector<base::X509Ptr> authorities)
    : td_(std::move(td)), authorities_(std::move(authorities)), store_(X509_STORE_new()) {
  if (!store_) {
    std::fprintf(stderr, "spiffe: X509_STORE_new failed: out of memory\n");
    std::abort();
  }
  for (const auto& cert : authorities_) {
    assert(cert);
    // Adding a certificate only fails on allocation; a duplicate is accepted silently.
    if (X509_STORE_add_cert(store_.get(), cert.get()) != 1) {
      std::fprintf(stderr, "spiffe: X509_STORE_add_cert failed: %s\n",
                   base::drain_openssl_errors().c_str());
      std::abort();
    }
  }
}

Result<Bundle> Bundle::from_der(TrustDomain td, std::string_view der) {
  auto certs = parse_der_certificates(der);
  if (!certs.ok()) {
    return certs.error().wrap(bundle_name(td));
  }
  return Bundle(std::move(td), std::move(*certs));
}

Result<Bundle> Bundle::from_pem(TrustDomain td, std::string_view pem) {
  auto certs = parse_pem_certificates(pem);
  if (!certs.ok()) {
    return certs.error().wrap(bundle_name(td));
  }
  return Bundle(std::move(td), std::move(*certs));
}

Result<Bundle> Bundle::from_jwks(TrustDomain td, std::string_view json) {
  const std::string name = bundle_name(td);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::exception& e) {
    // Not only parse_error: a number beyond double's range ("1e999") throws out_of_range.
    return Error{name + " is not valid JSON: " + e.what()};
  }
  if (!doc.is_object()) {
    return Error{name + " is not a JSON object (expected a SPIFFE bundle, a JWK Set)"};
  }
  const auto keys = doc.find("keys");
  if (keys == doc.end()) {
    return Error{name + " has no \"keys\" member; a SPIFFE bundle must have one (it may be empty)"};
  }
  if (!keys->is_array()) {
    return Error{name + ": \"keys\" is not an array"};
  }
  std::vector<base::X509Ptr> authorities;
  for (size_t i = 0; i < keys->size(); ++i) {
    const nlohmann::json& jwk = (*keys)[i];
    if (!jwk.is_object()) {
      return Error{name + ": keys[" + std::to_string(i) + "] is not a JSON object"};
    }
    if (!is_x509_svid_jwk(jwk)) {
      continue;
    }
    auto cert = authority_of_jwk(jwk, i);
    if (!cert.ok()) {
      return cert.error().wrap(name);
    }
    if (*cert) {
      authorities.push_back(std::move(*cert));
    }
  }
  return Bundle(std::move(td), std::move(authorities));
}

Result<Bundle> Bundle::parse(TrustDomain td, std::string_view data) {
  const size_t first = data.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && data[first] == '{') {
    return from_jwks(std::move(td), data);
  }
  // A DER certificate starts with a SEQUENCE tag and a long-form length (it is always longer than
  // 127 bytes); its body may contain any bytes, so "-----BEGIN" is only searched for otherwise.
  // Searching the whole text admits PEM files with explanatory text before the first block.
  const bool der = data.size() >= 2 && static_cast<unsigned char>(data[0]) == 0x30 &&
                   (static_cast<unsigned char>(data[1]) & 0x80) != 0;
  if (!der && data.find("-----BEGIN") != std::string_view::npos) {
    return from_pem(std::move(td), data);
  }
  return from_der(std::move(td), data);
}

bool Bundle::same_authorities(const Bundle& other) const {
  if (authorities_.size() != other.authorities_.size()) {
    return false;
  }
  for (size_t i = 0; i < authorities_.size(); ++i) {
    if (X509_cmp(authorities_[i].get(), other.authorities_[i].get()) != 0) {
      return false;
    }
  }
  return true;
}

void BundleSet::put(std::shared_ptr<const Bundle> bundle) {
  assert(bundle);
  const TrustDomain td = bundle->trust_domain();
  bundles_[td] = std::move(bundle);
}

const Bundle* BundleSet::find(const TrustDomain& td) const {
  const auto it = bundles_.find(td);
  return it == bundles_.end() ? nullptr : it->second.get();
}

std::vector<TrustDomain> BundleSet::trust_domains() const {
  std::vector<TrustDomain> out;
  out.reserve(bundles_.size());
  for (const auto& [td, bundle] : bundles_) {
    out.push_back(td);
  }
  return out;
}

}  // namespace spiffe_tunnel::spiffe
