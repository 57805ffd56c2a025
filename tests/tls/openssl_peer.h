#pragma once
// A plain OpenSSL TLS 1.3 endpoint for interop tests of the userspace record layer: an
// independent implementation of the same records, KeyUpdate included.

#include <openssl/ssl.h>

#include <string>
#include <string_view>

#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/spiffe/x509_svid.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "tls/test_tls.h"

namespace spiffe_tunnel::tls::testing {

inline std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) {
    s[i] = static_cast<char>((i * 7919) ^ (i >> 8));
  }
  return s;
}

// Our end's TLS options facing an OpenSSL peer: one TLS 1.3 suite, any verified peer allowed.
inline TlsOptions interop_options(bool we_are_server, const std::string& suite) {
  TlsOptions o;
  o.role = we_are_server ? Role::kServer : Role::kClient;
  o.authorizer = allow_any_verified();
  o.tls13_ciphersuites = suite;
  return o;
}

inline int accept_any(int, X509_STORE_CTX*) { return 1; }

// A plain OpenSSL endpoint on a blocking socket in its own thread: presents `svid`, asks for (and
// does not check) the other side's certificate, and sends OpenSSL's default two session tickets
// when it is the server. It makes no Catch2 assertions (they are not thread-safe): a setup
// failure leaves `ssl` empty and the test's thread checks the report.
struct OpenSslPeer {
  base::SslCtxPtr ctx;
  base::SslPtr ssl;

  OpenSslPeer(bool server, const spiffe::X509Svid& svid, int fd, const std::string& suite) {
    ctx.reset(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
    if (!ctx || SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_ciphersuites(ctx.get(), suite.c_str()) != 1 ||
        SSL_CTX_use_certificate(ctx.get(), svid.leaf()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx.get(), svid.key.get()) != 1) {
      return;
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, accept_any);
    ssl.reset(SSL_new(ctx.get()));
    if (!ssl || SSL_set_fd(ssl.get(), fd) != 1) {
      ssl.reset();
      return;
    }
    if (server) {
      SSL_set_accept_state(ssl.get());
    } else {
      SSL_set_connect_state(ssl.get());
    }
  }

  std::string read_exactly(std::size_t n) {
    std::string out(n, '\0');
    std::size_t got = 0;
    while (got < n) {
      std::size_t k = 0;
      if (SSL_read_ex(ssl.get(), out.data() + got, n - got, &k) != 1) {
        break;
      }
      got += k;
    }
    out.resize(got);
    return out;
  }
  bool write(std::string_view s) {
    std::size_t k = 0;
    return SSL_write_ex(ssl.get(), s.data(), s.size(), &k) == 1 && k == s.size();
  }
};

}  // namespace spiffe_tunnel::tls::testing
