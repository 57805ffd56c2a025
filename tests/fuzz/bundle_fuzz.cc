// Fuzzes the trust bundle parsers: concatenated DER (Workload API), PEM (files mode) and SPIFFE
// bundle JWKS (federation), each with the same bytes, plus the format detection of parse().
// A parsed bundle must hold only certificates that re-encode, and its X509_STORE must exist.
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "spiffe_tunnel/spiffe/bundle.h"

using spiffe_tunnel::spiffe::Bundle;
using spiffe_tunnel::spiffe::TrustDomain;

namespace {

void check(const spiffe_tunnel::base::Result<Bundle>& bundle) {
  if (!bundle.ok()) return;
  if (bundle->store() == nullptr) std::abort();
  for (const auto& cert : bundle->authorities()) {
    if (i2d_X509(cert.get(), nullptr) <= 0) std::abort();
  }
  if (!bundle->same_authorities(*bundle)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const TrustDomain kTd = *TrustDomain::parse("example.org");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check(Bundle::from_der(kTd, text));
  check(Bundle::from_pem(kTd, text));
  check(Bundle::from_jwks(kTd, text));
  check(Bundle::parse(kTd, text));
  return 0;
}
