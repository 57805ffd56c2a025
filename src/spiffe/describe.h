#pragma once
// Private to the spiffe module: how certificates are named in error messages.

#include <string>

#include "spiffe_tunnel/base/openssl.h"

namespace spiffe_tunnel::spiffe {

// base::describe_certificate without the leading space it leaves for an empty subject, which
// X.509-SVIDs usually have.
inline std::string describe(const X509* cert) {
  std::string text = base::describe_certificate(cert);
  const size_t start = text.find_first_not_of(' ');
  return start == std::string::npos ? text : text.substr(start);
}

}  // namespace spiffe_tunnel::spiffe
