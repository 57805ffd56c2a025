#include "spiffe_tunnel/base/openssl.h"

#include <openssl/bn.h>
#include <openssl/err.h>

namespace spiffe_tunnel::base {

X509Ptr share(X509* cert) {
  X509_up_ref(cert);
  return X509Ptr(cert);
}

EvpPkeyPtr share(EVP_PKEY* key) {
  EVP_PKEY_up_ref(key);
  return EvpPkeyPtr(key);
}

std::string drain_openssl_errors() {
  std::string out;
  unsigned long code = 0;
  while ((code = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!out.empty()) {
      out += "; ";
    }
    out += buf;
  }
  return out;
}

std::string serial_hex(const X509* cert) {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert);
  BIGNUM* bn = ASN1_INTEGER_to_BN(serial, nullptr);
  if (bn == nullptr) {
    return "?";
  }
  char* hex = BN_bn2hex(bn);
  std::string out = hex != nullptr ? hex : "?";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

std::string describe_certificate(const X509* cert) {
  char buf[256] = {0};
  X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
  return std::string(buf) + " serial=" + serial_hex(cert);
}

}  // namespace spiffe_tunnel::base
