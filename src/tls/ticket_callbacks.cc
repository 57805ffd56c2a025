// The OpenSSL side of session resumption (resumption.h): the callbacks a context with
// `session_resumption` installs, for a server (ticket keys, what a ticket says about its peer,
// whether a presented ticket is still good) and for a client (keeping the tickets it receives).

#include <openssl/x509.h>

#include <algorithm>

#include "spiffe_tunnel/tls/tls_context.h"

namespace spiffe_tunnel::tls {
namespace {

ConnectionState* state_of(const SSL* ssl) {
  return static_cast<ConnectionState*>(SSL_get_app_data(ssl));
}

const TlsContext* context_of(const SSL* ssl) {
  return static_cast<const TlsContext*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

// The peer this connection's ticket speaks for: the full handshake's, or (after a resumption)
// the one the earlier ticket vouched for. Null when neither verified it.
const PeerOutcome* vouched_peer(const SSL* ssl, const ConnectionState& state) {
  const PeerOutcome* peer = SSL_session_reused(const_cast<SSL*>(ssl)) == 1
                                ? state.resumed_peer.get()
                                : &state.outcome;
  return peer != nullptr && peer->verified && peer->peer_id && peer->chain ? peer : nullptr;
}

// The parsed chain of a ticket, as the VerifiedChain of the handshake that issued it.
std::shared_ptr<const VerifiedChain> chain_from(const TicketFacts& facts,
                                                const spiffe::VerifyParams& params,
                                                const spiffe::BundleSet& bundles) {
  std::vector<base::X509Ptr> certs;
  for (const std::string& der : facts.chain_der) {
    const auto* p = reinterpret_cast<const unsigned char*>(der.data());
    base::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
    if (!cert || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size()) {
      return nullptr;
    }
    certs.push_back(std::move(cert));
  }
  base::X509StackPtr untrusted(sk_X509_new_null());
  for (std::size_t i = 1; i < certs.size(); ++i) {
    if (!untrusted || sk_X509_push(untrusted.get(), certs[i].get()) == 0) {
      return nullptr;
    }
    X509_up_ref(certs[i].get());
  }
  return VerifiedChain::capture(certs.front().get(), untrusted.get(), params, bundles);
}

}  // namespace

void TlsContext::enable_resumption(SSL_CTX* c) {
  SSL_CTX_set_app_data(c, this);
  const auto lifetime = std::chrono::duration_cast<std::chrono::seconds>(options_->ticket_lifetime);
  if (options_->role == Role::kServer) {
    // Stateless TLS 1.3 tickets (SSL_OP_NO_TICKET would make them stateful), one per full
    // handshake; none after a resumption (the client keeps using the one it has).
    SSL_CTX_clear_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(c, 1);
    SSL_CTX_set_timeout(c, static_cast<long>(lifetime.count()));
    // A resumed session must come from this kind of context (OpenSSL requires an ID context
    // for resumption with client certificates).
    static const unsigned char kIdContext[] = "spiffe-tunnel";
    SSL_CTX_set_session_id_context(c, kIdContext, sizeof(kIdContext) - 1);
    ticket_keys_ = std::make_unique<TicketKeys>(options_->ticket_lifetime);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(c, &TlsContext::ticket_key_callback);
    SSL_CTX_set_session_ticket_cb(c, &TlsContext::generate_ticket_callback,
                                  &TlsContext::decrypt_ticket_callback, this);
    SSL_CTX_set_client_hello_cb(c, &TlsContext::client_hello_callback, this);
  } else {
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, &TlsContext::new_session_callback);
    sessions_ = std::make_unique<SessionCache>();
  }
}

// TLS 1.2 would get tickets too once SSL_OP_NO_TICKET is cleared for TLS 1.3's sake. A client
// that does not offer TLS 1.3 (no 0x0304 in supported_versions) gets no ticket at all, rather
// than one its resumption would be refused with.
int TlsContext::client_hello_callback(SSL* ssl, int* /*alert*/, void* /*arg*/) {
  const unsigned char* data = nullptr;
  size_t len = 0;
  bool offers_tls13 = false;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &data, &len) == 1 &&
      len >= 1) {
    const size_t end = std::min<size_t>(len, 1 + static_cast<size_t>(data[0]));
    for (size_t i = 1; i + 1 < end; i += 2) {
      offers_tls13 = offers_tls13 || (data[i] == 0x03 && data[i + 1] == 0x04);
    }
  }
  if (!offers_tls13) {
    SSL_set_options(ssl, SSL_OP_NO_TICKET);
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

int TlsContext::ticket_key_callback(SSL* ssl, unsigned char* name, unsigned char* iv,
                                    EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int enc) {
  const TlsContext* self = context_of(ssl);
  if (self == nullptr || !self->ticket_keys_) {
    return enc != 0 ? -1 : 0;
  }
  const int r = self->ticket_keys_->use(name, iv, cipher, mac, enc);
  if (r == 0 && enc == 0) {
    if (ConnectionState* state = state_of(ssl)) {
      state->resumption_refused = kRefusedUnknownKey;
    }
  }
  return r;
}

// Seals what the full handshake concluded about the peer into the ticket, and bounds the ticket's
// lifetime (its hint, and what decrypt_ticket_callback accepts) by the peer's chain.
int TlsContext::generate_ticket_callback(SSL* ssl, void* arg) {
  const auto* self = static_cast<const TlsContext*>(arg);
  SSL_SESSION* session = SSL_get0_session(ssl);
  const ConnectionState* state = state_of(ssl);
  const PeerOutcome* peer = state != nullptr ? vouched_peer(ssl, *state) : nullptr;
  if (session == nullptr) {
    return 0;
  }
  TicketFacts facts;
  const auto now = self->clock_->now();
  if (peer != nullptr) {
    facts.expires = std::min(now + std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                       self->options_->ticket_lifetime),
                             peer->chain->not_after());
    facts.peer_id = peer->peer_id->str();
    facts.chain_der = peer->chain->der();
  } else {
    facts.expires = now;  // nothing verified: a ticket that no resumption accepts
  }
  const auto left = std::chrono::duration_cast<std::chrono::seconds>(facts.expires - now);
  SSL_SESSION_set_timeout(session, static_cast<long>(std::max<int64_t>(left.count(), 0)));
  const std::string data = encode_ticket_facts(facts);
  return SSL_SESSION_set1_ticket_appdata(session, data.data(), data.size());
}

// Decides whether a presented ticket is used. Anything but "use" means a full handshake, which
// verifies and authorizes the peer again (and refuses it if it no longer passes).
SSL_TICKET_RETURN TlsContext::decrypt_ticket_callback(SSL* ssl, SSL_SESSION* session,
                                                      const unsigned char* /*key_name*/,
                                                      size_t /*key_name_len*/,
                                                      SSL_TICKET_STATUS status, void* arg) {
  const auto* self = static_cast<const TlsContext*>(arg);
  ConnectionState* state = state_of(ssl);
  if (state == nullptr) {
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  state->resumed_peer.reset();
  if (status != SSL_TICKET_SUCCESS && status != SSL_TICKET_SUCCESS_RENEW) {
    if (status == SSL_TICKET_NO_DECRYPT) {
      state->resumption_refused = kRefusedUnknownKey;
    }
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  if (SSL_SESSION_get_protocol_version(session) != TLS1_3_VERSION) {
    state->resumption_refused = kRefusedNotTls13;
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  void* data = nullptr;
  size_t len = 0;
  std::optional<TicketFacts> facts;
  if (SSL_SESSION_get0_ticket_appdata(session, &data, &len) == 1 && data != nullptr) {
    facts = decode_ticket_facts({static_cast<const char*>(data), len});
  }
  std::optional<spiffe::SpiffeId> id;
  if (facts) {
    if (auto parsed = spiffe::SpiffeId::parse(facts->peer_id)) {
      id = std::move(*parsed);
    }
  }
  if (!id) {
    state->resumption_refused = kRefusedUnknownKey;
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  if (facts->expires <= self->clock_->now()) {
    state->resumption_refused = kRefusedExpired;
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  policy::Decision d = self->options_->authorizer->authorize(*id);
  if (!d.allowed) {
    state->resumption_refused = kRefusedNotAuthorized;
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  auto peer = std::make_shared<PeerOutcome>();
  peer->verify_params = spiffe::VerifyParams::from(SSL_get0_param(ssl));
  peer->verify_params.security_level = SSL_get_security_level(ssl);
  peer->chain = chain_from(*facts, peer->verify_params, self->snapshot_->bundles);
  if (!peer->chain) {
    state->resumption_refused = kRefusedUnknownKey;
    return SSL_TICKET_RETURN_IGNORE_RENEW;
  }
  peer->peer_id = std::move(*id);
  peer->authorized_by = d.reason;
  peer->verified = true;
  state->resumed_peer = std::move(peer);
  state->resumption_refused = {};
  return SSL_TICKET_RETURN_USE;
}

// Client: keeps a copy of a ticket from a server this connection verified (in full, or by a ticket that
// came from a full verification), until min(its lifetime hint, session_ticket_lifetime, the
// server's chain).
int TlsContext::new_session_callback(SSL* ssl, SSL_SESSION* session) {
  const TlsContext* self = context_of(ssl);
  ConnectionState* state = state_of(ssl);
  if (self == nullptr || !self->sessions_ || state == nullptr || state->endpoint.empty() ||
      SSL_SESSION_get_protocol_version(session) != TLS1_3_VERSION) {
    return 0;
  }
  const PeerOutcome* peer = vouched_peer(ssl, *state);
  if (peer == nullptr) {
    return 0;
  }
  const auto now = self->clock_->now();
  const auto hint = std::chrono::seconds(SSL_SESSION_get_ticket_lifetime_hint(session));
  const auto expires = std::min(
      {now + std::chrono::duration_cast<std::chrono::system_clock::duration>(hint),
       now + std::chrono::duration_cast<std::chrono::system_clock::duration>(
                 self->options_->ticket_lifetime),
       peer->chain->not_after()});
  if (expires <= now) {
    return 0;
  }
  // A copy: OpenSSL marks the connection's own session not resumable when the SSL object is
  // freed without a close_notify sent, as it is after the record layer moved on (hand_over).
  SSL_SESSION* copy = SSL_SESSION_dup(session);
  if (copy == nullptr) {
    return 0;
  }
  self->sessions_->put(state->endpoint, copy, std::make_shared<const PeerOutcome>(*peer), expires);
  state->ticket_received = true;
  return 0;  // OpenSSL keeps (and drops) its own reference
}

}  // namespace spiffe_tunnel::tls
