// Fuzzes the server side of the TLS handshake: an SSL object from the daemon's own TlsContext
// (TLS 1.2 and 1.3 allowed, client certificates required, the SPIFFE verify callback) over a
// memory BIO pair, fed the fuzz input as the client's bytes. The server's replies are read and
// dropped. What an unauthenticated client can reach: record framing, ClientHello parsing,
// extensions, alerts -- everything before the client must prove a key.
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/identity/snapshot.h"
#include "spiffe_tunnel/policy/authorizer.h"
#include "spiffe_tunnel/spiffe/issuer.h"
#include "spiffe_tunnel/tls/tls_context.h"

using namespace spiffe_tunnel;

namespace {

std::shared_ptr<const tls::TlsContext> make_context() {
  auto td = spiffe::TrustDomain::parse("example.org");
  auto root = spiffe::Issuer::create_root(*td);
  auto id = spiffe::SpiffeId::parse("spiffe://example.org/server");
  if (!root.ok() || !id.ok()) std::abort();
  auto svid = root->issue_svid(*id);
  if (!svid.ok()) std::abort();
  auto snapshot = std::make_shared<identity::Snapshot>();
  snapshot->svids.push_back(std::make_shared<spiffe::X509Svid>(std::move(*svid)));
  auto bundle = std::make_shared<spiffe::Bundle>(*td, [&] {
    std::vector<base::X509Ptr> certs;
    X509_up_ref(root->certificate());
    certs.emplace_back(root->certificate());
    return certs;
  }());
  snapshot->bundles.put(bundle);
  snapshot->source = "fuzz";
  static identity::IdentityStore store;
  store.publish(snapshot);
  tls::TlsOptions options;
  options.role = tls::Role::kServer;
  options.min_version = TLS1_2_VERSION;
  options.authorizer = std::make_shared<policy::AllowListAuthorizer>(
      std::vector<spiffe::SpiffeId>{}, std::vector<spiffe::TrustDomain>{},
      std::vector<spiffe::IdPattern>{}, true);
  static tls::ContextProvider provider(options, store, base::SystemClock::instance());
  auto context = provider.current();
  if (!context.ok()) std::abort();
  return *context;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto context = make_context();
  tls::ConnectionState state;
  SSL* ssl = SSL_new(context->ssl_ctx());
  BIO* internal = nullptr;
  BIO* network = nullptr;
  if (ssl == nullptr || BIO_new_bio_pair(&internal, 1 << 17, &network, 1 << 17) != 1) std::abort();
  SSL_set_bio(ssl, internal, internal);
  SSL_set_app_data(ssl, &state);
  SSL_set_accept_state(ssl);
  // The client's bytes arrive in up to four writes, split where the input says (its first
  // byte), so that records split across reads are covered too.
  size_t chunk = size;
  if (size > 1) {
    chunk = 1 + data[0] % 64 * 64;
    ++data;
    --size;
  }
  char sink[16384];
  for (int round = 0; round < 64; ++round) {
    if (size > 0) {
      const size_t n = std::min(size, chunk);
      if (BIO_write(network, data, static_cast<int>(n)) != static_cast<int>(n)) std::abort();
      data += n;
      size -= n;
    }
    const int rc = SSL_do_handshake(ssl);
    while (BIO_read(network, sink, sizeof sink) > 0) {
    }
    if (rc == 1) {
      // Past the handshake: read application data until the input runs out.
      char buf[4096];
      while (SSL_read(ssl, buf, sizeof buf) > 0) {
      }
    }
    const int err = SSL_get_error(ssl, rc);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) break;
    if (size == 0) break;
  }
  SSL_free(ssl);
  BIO_free(network);
  ERR_clear_error();
  return 0;
}
