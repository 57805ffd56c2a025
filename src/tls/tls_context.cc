#include "spiffe_tunnel/tls/tls_context.h"

#include <openssl/err.h>

#include "spiffe_tunnel/tls/records.h"

namespace spiffe_tunnel::tls {
namespace {

SSL* ssl_of(X509_STORE_CTX* store_ctx) {
  return static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
}

PeerOutcome* outcome_of(X509_STORE_CTX* store_ctx) {
  SSL* ssl = ssl_of(store_ctx);
  auto* state = ssl != nullptr ? static_cast<ConnectionState*>(SSL_get_app_data(ssl)) : nullptr;
  return state != nullptr ? &state->outcome : nullptr;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

ConnectionState::~ConnectionState() {
  OPENSSL_cleanse(peer_traffic_secret.data(), peer_traffic_secret.size());
  OPENSSL_cleanse(own_traffic_secret.data(), own_traffic_secret.size());
}

// OpenSSL 3.0 has no API for TLS 1.3 traffic secrets other than the key log. The application
// secrets are kept (in memory, per connection) only until the record layer after the handshake
// has derived its keys; nothing is ever written out.
void TlsContext::keylog_callback(const SSL* ssl, const char* line) {
  auto* state = static_cast<ConnectionState*>(SSL_get_app_data(ssl));
  if (state == nullptr) {
    return;
  }
  constexpr std::string_view kClient = "CLIENT_TRAFFIC_SECRET_0 ";
  constexpr std::string_view kServer = "SERVER_TRAFFIC_SECRET_0 ";
  std::string_view l(line);
  const bool client = l.substr(0, kClient.size()) == kClient;
  if (!client && l.substr(0, kServer.size()) != kServer) {
    return;
  }
  std::vector<unsigned char>& secret =
      client == (SSL_is_server(ssl) != 0) ? state->peer_traffic_secret : state->own_traffic_secret;
  decode_traffic_secret(l.substr(l.rfind(' ') + 1), secret);
}

bool decode_traffic_secret(std::string_view hex, std::vector<unsigned char>& secret) {
  OPENSSL_cleanse(secret.data(), secret.size());
  secret.clear();
  // Room for the whole secret first: a vector that grew while being filled would free its
  // earlier buffers, with their part of the secret, unwiped.
  secret.reserve(hex.size() / 2);
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    const int hi = hex_value(hex[i]);
    const int lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      OPENSSL_cleanse(secret.data(), secret.size());
      secret.clear();
      return false;
    }
    secret.push_back(static_cast<unsigned char>(hi << 4 | lo));
  }
  return true;
}

// Selects the tunnel's ALPN protocol when the client offers it; a client that offers only others
// (or none) is served as a dedicated connection, as if ALPN did not exist (RFC 7301 §3.2 allows
// a server to ignore protocols it does not speak).
int TlsContext::alpn_select_callback(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen,
                                     const unsigned char* in, unsigned inlen, void* arg) {
  const std::string& want = static_cast<const TlsContext*>(arg)->options_->alpn;
  for (unsigned i = 0; i < inlen;) {
    const unsigned len = in[i];
    if (i + 1 + len > inlen) {
      break;
    }
    if (std::string_view(reinterpret_cast<const char*>(in + i + 1), len) == want) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

// Watches for a peer's TLS 1.3 KeyUpdate: OpenSSL 3.0 would re-key its own write context but not
// the kernel's, so with kernel TX offload the connection would silently corrupt. The stream
// closes the connection instead (see OpenSslStream::try_read). Also counts what the record layer
// after OpenSSL must know of: records read while a client waits for its ticket, and tickets sent.
void TlsContext::msg_callback(int write_p, int /*version*/, int content_type, const void* buf,
                              size_t len, SSL* ssl, void* /*arg*/) {
  auto* state = static_cast<ConnectionState*>(SSL_get_app_data(ssl));
  if (state == nullptr) {
    return;
  }
  if (content_type == SSL3_RT_HEADER) {
    if (write_p == 0 && state->count_read_records) {
      ++state->records_read;
    }
    return;
  }
  if (content_type != SSL3_RT_HANDSHAKE || len == 0) {
    return;
  }
  const unsigned char type = static_cast<const unsigned char*>(buf)[0];
  if (write_p == 0 && type == kKeyUpdate) {
    state->peer_key_update = true;
  } else if (write_p != 0 && type == SSL3_MT_NEWSESSION_TICKET) {
    ++state->tickets_sent;
  }
}

std::string_view ktls_mode_name(KtlsMode m) {
  switch (m) {
    case KtlsMode::kAuto:
      return "auto";
    case KtlsMode::kOn:
      return "on";
    case KtlsMode::kOff:
      return "off";
  }
  return "?";
}

base::Result<int> parse_tls_version(std::string_view text) {
  if (text == "1.2" || text == "tls1.2" || text == "TLSv1.2") {
    return TLS1_2_VERSION;
  }
  if (text == "1.3" || text == "tls1.3" || text == "TLSv1.3") {
    return TLS1_3_VERSION;
  }
  return base::make_error("\"" + std::string(text) + "\" is not a TLS version (use 1.2 or 1.3)");
}

// SPIFFE verification replaces OpenSSL's: OpenSSL would accept CA leaves, several URI SANs and,
// with a pooled store, one trust domain vouching for another's IDs (SPIFFE.md §2.3).
int TlsContext::verify_callback(X509_STORE_CTX* store_ctx, void* arg) {
  const auto* self = static_cast<const TlsContext*>(arg);
  PeerOutcome* outcome = outcome_of(store_ctx);
  if (outcome == nullptr) {
    // Every SSL we create carries an outcome; anything else is a programming error. Fail closed.
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
  if (leaf == nullptr) {
    outcome->rejection = spiffe::Rejection::kNoCertificate;
    outcome->detail = "peer sent no certificate";
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
  }
  // The parameters OpenSSL prepared for its own verification (flags, depth, and the SSL's
  // security level as auth level) hold for the SPIFFE one too; they are kept with the outcome
  // for any later re-check of the same chain.
  outcome->verify_params = spiffe::VerifyParams::from(X509_STORE_CTX_get0_param(store_ctx));
  outcome->verify_params.security_level = SSL_get_security_level(ssl_of(store_ctx));
  STACK_OF(X509)* untrusted = X509_STORE_CTX_get0_untrusted(store_ctx);
  spiffe::PeerVerification v = spiffe::verify_peer_chain(
      leaf, untrusted, self->snapshot_->bundles, self->clock_->now(), outcome->verify_params);
  outcome->peer_id = v.id;
  if (!v.ok()) {
    outcome->rejection = v.rejection;
    outcome->detail = v.detail;
    X509_STORE_CTX_set_error(store_ctx, v.rejection == spiffe::Rejection::kExpired
                                            ? X509_V_ERR_CERT_HAS_EXPIRED
                                            : X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  policy::Decision d = self->options_->authorizer->authorize(*v.id);
  if (!d.allowed) {
    outcome->rejection = spiffe::Rejection::kNotAuthorized;
    outcome->detail = "peer " + v.id->str() + " is not authorized: " + d.reason;
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  outcome->authorized_by = d.reason;
  outcome->verified = true;
  outcome->chain =
      VerifiedChain::capture(leaf, untrusted, outcome->verify_params, self->snapshot_->bundles);
  return 1;
}

ContextProvider::ContextProvider(TlsOptions options, const identity::IdentityStore& store,
                                 const base::Clock& clock)
    : options_(std::make_shared<const TlsOptions>(std::move(options))),
      store_(store),
      clock_(clock) {}

base::Result<std::shared_ptr<const TlsContext>> ContextProvider::current() const {
  std::shared_ptr<const identity::Snapshot> snapshot = store_.current();
  if (!snapshot) {
    return base::make_error(
        "no identity held: none has arrived from the identity source yet, or it was revoked or "
        "has expired");
  }
  std::lock_guard lock(mutex_);
  if (snapshot == cached_snapshot_ && cached_) {
    return cached_;
  }
  auto built = build(snapshot);
  if (!built) {
    return built.error();
  }
  cached_snapshot_ = snapshot;
  cached_ = *built;
  return cached_;
}

namespace {
constexpr long kMaxCertList = 32 * 1024;
}  // namespace

base::Result<std::shared_ptr<const TlsContext>> ContextProvider::build(
    std::shared_ptr<const identity::Snapshot> snapshot) const {
  auto svid = options_->svid.select(*snapshot);
  if (!svid) {
    return svid.error();
  }
  const bool server = options_->role == Role::kServer;
  base::SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx) {
    return base::make_error("SSL_CTX_new failed: " + base::drain_openssl_errors());
  }
  SSL_CTX* c = ctx.get();
  SSL_CTX_set_min_proto_version(c, options_->min_version);
  SSL_CTX_set_max_proto_version(c, options_->max_version);
  if (SSL_CTX_set_ciphersuites(c, options_->tls13_ciphersuites.c_str()) != 1) {
    return base::make_error("TLS 1.3 cipher suites \"" + options_->tls13_ciphersuites +
                            "\" are not usable: " + base::drain_openssl_errors());
  }
  if (SSL_CTX_set_cipher_list(c, options_->tls12_ciphers.c_str()) != 1) {
    return base::make_error("TLS 1.2 ciphers \"" + options_->tls12_ciphers +
                            "\" are not usable: " + base::drain_openssl_errors());
  }
  // Unless the tunnel enables resumption (enable_resumption() below), every connection is
  // verified and authorized in full: no tickets, no session cache.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(c, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                             SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_num_tickets(c, 0);
  // RELEASE_BUFFERS: an idle session holds no 16 KiB read/write buffers (memory per connection).
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
  // The peer's Certificate message is buffered whole before it is verified, so its size is what
  // an unauthenticated peer can pin per handshake (OpenSSL's default allows 100 KiB). A SPIFFE
  // chain is a leaf and a few intermediates of 1-2 KiB each (RSA-4096: ~2 KiB, EC: <1 KiB);
  // 32 KiB leaves room for a chain of ten large certificates.
  SSL_CTX_set_max_cert_list(c, kMaxCertList);
  // The key log feeds the record layer after the handshake (see ConnectionState).
  SSL_CTX_set_keylog_callback(c, &TlsContext::keylog_callback);
  if (options_->ktls != KtlsMode::kOff) {
    SSL_CTX_set_options(c, SSL_OP_ENABLE_KTLS);
  }
  if (options_->ktls != KtlsMode::kOff || options_->session_resumption) {
    SSL_CTX_set_msg_callback(c, &TlsContext::msg_callback);
  }

  const spiffe::X509Svid& s = **svid;
  if (SSL_CTX_use_certificate(c, s.leaf()) != 1 || SSL_CTX_use_PrivateKey(c, s.key.get()) != 1) {
    return base::make_error("SVID " + s.id.str() +
                            " cannot be used: " + base::drain_openssl_errors());
  }
  for (size_t i = 1; i < s.chain.size(); ++i) {
    // add1 takes its own reference.
    if (SSL_CTX_add1_chain_cert(c, s.chain[i].get()) != 1) {
      return base::make_error("SVID " + s.id.str() +
                              " intermediate rejected: " + base::drain_openssl_errors());
    }
  }
  if (SSL_CTX_check_private_key(c) != 1) {
    return base::make_error("SVID " + s.id.str() + ": private key does not match certificate");
  }

  auto out = std::shared_ptr<TlsContext>(new TlsContext());
  out->snapshot_ = std::move(snapshot);
  out->svid_ = *svid;
  out->options_ = options_;
  out->clock_ = &clock_;
  SSL_CTX_set_verify(c,
                     server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
                     nullptr);
  SSL_CTX_set_cert_verify_callback(c, &TlsContext::verify_callback, out.get());
  if (server && !options_->alpn.empty()) {
    SSL_CTX_set_alpn_select_cb(c, &TlsContext::alpn_select_callback, out.get());
  }
  if (options_->session_resumption) {
    out->enable_resumption(c);
  }
  out->ctx_ = std::move(ctx);
  return std::shared_ptr<const TlsContext>(std::move(out));
}

}  // namespace spiffe_tunnel::tls
