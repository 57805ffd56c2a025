// TLS 1.3 session resumption between two ends built from the tls module: real handshakes over
// loopback, against one server address so that the client's ticket cache applies.

#include "spiffe_tunnel/tls/resumption.h"

#include <openssl/evp.h>

#include <atomic>
#include <thread>

#include "tls/tls_pair.h"

namespace spiffe_tunnel::tls {
namespace {

using testing::Connection;
using testing::End;
using testing::Pki;
using testing::Side;

// Allows the listed peer while `allow` is set (a policy that changes under a live context).
class Switchable final : public policy::Authorizer {
 public:
  explicit Switchable(std::string id) : id_(std::move(id)) {}
  policy::Decision authorize(const spiffe::SpiffeId& peer) const override {
    if (allow.load() && peer.str() == id_) {
      return {true, "id " + id_ + " is listed"};
    }
    return {false, "no rule lists " + peer.str()};
  }
  std::string describe() const override { return "ids=[" + id_ + "]"; }
  std::atomic<bool> allow{true};

 private:
  std::string id_;
};

TlsOptions resumption_options(Role role, std::shared_ptr<const policy::Authorizer> authorizer) {
  TlsOptions o = testing::options_for(role, std::move(authorizer));
  o.session_resumption = true;
  o.ktls = KtlsMode::kOff;
  return o;
}

// A server listening on one loopback address, and a client; connect() runs one handshake pair.
struct ResumingPair {
  Pki pki;
  std::shared_ptr<Switchable> server_policy =
      std::make_shared<Switchable>("spiffe://example.org/client");
  std::shared_ptr<Switchable> client_policy =
      std::make_shared<Switchable>("spiffe://example.org/server");
  Side server{resumption_options(Role::kServer, server_policy),
              testing::snapshot_of({pki.server}, {&pki.example})};
  Side client{resumption_options(Role::kClient, client_policy),
              testing::snapshot_of({pki.client}, {&pki.example})};
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io, {asio::ip::address_v4::loopback(), 0}};

  Connection connect() { return connect_with(client.context(), server.context()); }

  Connection connect_with(std::shared_ptr<const TlsContext> client_ctx,
                          std::shared_ptr<const TlsContext> server_ctx) {
    asio::ip::tcp::socket c(io);
    c.connect(acceptor.local_endpoint());
    asio::ip::tcp::socket s = acceptor.accept();
    Connection out;
    out.client.handshake = testing::handshake_on(std::move(c), std::move(client_ctx));
    out.server.handshake = testing::handshake_on(std::move(s), std::move(server_ctx));
    testing::spawn_handshake(io, out.client);
    testing::spawn_handshake(io, out.server);
    testing::run_bounded(io);
    return out;
  }
};

// One byte each way through the established streams.
void exchange(asio::io_context& io, Connection& c) {
  std::string got_server, got_client;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::error_code ec;
        co_await c.client.stream->write_all(std::string_view("c"), ec);
        char b[1];
        const std::size_t n = co_await c.server.stream->read_some({b, 1}, ec);
        got_server.assign(b, n);
        co_await c.server.stream->write_all(std::string_view("s"), ec);
        const std::size_t m = co_await c.client.stream->read_some({b, 1}, ec);
        got_client.assign(b, m);
      },
      testing::rethrow);
  testing::run_bounded(io);
  CHECK(got_server == "c");
  CHECK(got_client == "s");
}

}  // namespace

TEST_CASE("ticket facts survive their encoding and anything malformed is refused") {
  TicketFacts f;
  f.expires = std::chrono::system_clock::time_point(std::chrono::seconds(1'900'000'000));
  f.peer_id = "spiffe://example.org/client";
  f.chain_der = {std::string("\x30\x82leaf", 6), std::string("inter")};
  const std::string wire = encode_ticket_facts(f);
  auto back = decode_ticket_facts(wire);
  REQUIRE(back);
  CHECK(back->expires == f.expires);
  CHECK(back->peer_id == f.peer_id);
  CHECK(back->chain_der == f.chain_der);

  CHECK_FALSE(decode_ticket_facts(""));
  CHECK_FALSE(decode_ticket_facts(wire.substr(0, wire.size() - 1)));  // truncated
  CHECK_FALSE(decode_ticket_facts(wire + "x"));                       // trailing bytes
  std::string other_version = wire;
  other_version[0] = 2;
  CHECK_FALSE(decode_ticket_facts(other_version));
  TicketFacts empty_chain = f;
  empty_chain.chain_der.clear();
  CHECK_FALSE(decode_ticket_facts(encode_ticket_facts(empty_chain)));
}

TEST_CASE("ticket keys: the current key seals, the previous one still opens, older ones do not") {
  EVP_MAC* hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  REQUIRE(hmac != nullptr);
  auto use = [&](TicketKeys& keys, unsigned char* name, int enc) {
    EVP_CIPHER_CTX* cipher = EVP_CIPHER_CTX_new();
    EVP_MAC_CTX* mac = EVP_MAC_CTX_new(hmac);
    unsigned char iv[EVP_MAX_IV_LENGTH] = {};
    const int r = keys.use(name, iv, cipher, mac, enc);
    EVP_MAC_CTX_free(mac);
    EVP_CIPHER_CTX_free(cipher);
    return r;
  };
  TicketKeys keys(std::chrono::milliseconds(50));
  unsigned char first[16], second[16], unknown[16] = {};
  REQUIRE(use(keys, first, 1) == 1);
  CHECK(use(keys, first, 0) == 1);
  CHECK(use(keys, unknown, 0) == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  REQUIRE(use(keys, second, 1) == 1);  // rotated: a new name
  CHECK(std::memcmp(first, second, 16) != 0);
  CHECK(use(keys, first, 0) == 2);  // the previous key: accepted, to be replaced
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  unsigned char third[16];
  REQUIRE(use(keys, third, 1) == 1);
  CHECK(use(keys, first, 0) == 0);  // two rotations ago: gone
  CHECK(use(keys, second, 0) == 2);
  EVP_MAC_free(hmac);
}

TEST_CASE("a second connection resumes, both ends know the peer, and data flows") {
  ResumingPair p;
  Connection first = p.connect();
  REQUIRE(first.client.ok());
  REQUIRE(first.server.ok());
  CHECK_FALSE(first.client.handshake->resumed());
  CHECK_FALSE(first.server.handshake->resumed());
  exchange(p.io, first);

  Connection second = p.connect();
  REQUIRE(second.client.ok());
  REQUIRE(second.server.ok());
  CHECK(second.client.handshake->resumed());
  CHECK(second.server.handshake->resumed());
  CHECK(second.server.stream->info().resumed);
  const PeerOutcome& on_server = second.server.stream->info().peer;
  REQUIRE(on_server.peer_id);
  CHECK(on_server.peer_id->str() == "spiffe://example.org/client");
  REQUIRE(on_server.chain);  // kept for the session's later checks against new bundles
  CHECK(on_server.chain->not_after() == first.server.stream->info().peer.chain->not_after());
  CHECK_THAT(on_server.authorized_by, Catch::Contains("is listed"));
  REQUIRE(second.client.stream->info().peer.peer_id);
  CHECK(second.client.stream->info().peer.peer_id->str() == "spiffe://example.org/server");
  // The server sent its ticket before any data, with the first traffic key: the record layers
  // after OpenSSL go on at the right sequence numbers both ways.
  exchange(p.io, second);

  Connection third = p.connect();  // the same ticket again
  REQUIRE(third.client.ok());
  CHECK(third.server.handshake->resumed());
  exchange(p.io, third);
}

TEST_CASE("a ticket from an earlier context (new snapshot: SVID or bundles) is refused") {
  ResumingPair p;
  REQUIRE(p.connect().server.ok());
  // The same identity published again: a new snapshot, so a new server context and ticket keys.
  p.server.store.publish(testing::snapshot_of({p.pki.server}, {&p.pki.example}));
  Connection c = p.connect();
  REQUIRE(c.server.ok());
  CHECK_FALSE(c.server.handshake->resumed());
  CHECK(c.server.handshake->resumption_refused() == kRefusedUnknownKey);
  CHECK(c.client.handshake->resumption_refused() == kRefusedDeclined);
  Connection after = p.connect();  // the full handshake brought a ticket of the new context
  REQUIRE(after.server.ok());
  CHECK(after.server.handshake->resumed());
}

TEST_CASE("a peer the server's rules no longer allow is refused at resumption, not let in") {
  ResumingPair p;
  REQUIRE(p.connect().server.ok());
  p.server_policy->allow = false;
  Connection c = p.connect();
  CHECK_FALSE(c.server.ok());
  CHECK(c.server.handshake->resumption_refused() == kRefusedNotAuthorized);
  CHECK(c.server.outcome().rejection == spiffe::Rejection::kNotAuthorized);
}

TEST_CASE("a client does not offer a ticket of a server its rules no longer allow") {
  ResumingPair p;
  REQUIRE(p.connect().client.ok());
  p.client_policy->allow = false;
  Connection c = p.connect();
  CHECK_FALSE(c.client.ok());
  CHECK(c.client.handshake->resumption_refused() == kRefusedNotAuthorized);
  CHECK(c.client.outcome().rejection == spiffe::Rejection::kNotAuthorized);
}

TEST_CASE("tickets end with their lifetime") {
  ResumingPair p;
  TlsOptions s = resumption_options(Role::kServer, p.server_policy);
  s.ticket_lifetime = std::chrono::seconds(1);
  TlsOptions c = resumption_options(Role::kClient, p.client_policy);
  c.ticket_lifetime = std::chrono::seconds(1);
  Side server(s, testing::snapshot_of({p.pki.server}, {&p.pki.example}));
  Side client(c, testing::snapshot_of({p.pki.client}, {&p.pki.example}));
  REQUIRE(p.connect_with(client.context(), server.context()).server.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  Connection later = p.connect_with(client.context(), server.context());
  REQUIRE(later.server.ok());
  CHECK_FALSE(later.server.handshake->resumed());
  CHECK(later.client.handshake->resumption_refused() == kRefusedExpired);
}

TEST_CASE("without resumption on the server the client gets no ticket and stops waiting") {
  ResumingPair p;
  TlsOptions s = testing::options_for(Role::kServer, p.server_policy);
  s.ktls = KtlsMode::kOff;
  Side server(s, testing::snapshot_of({p.pki.server}, {&p.pki.example}));
  const auto began = std::chrono::steady_clock::now();
  Connection first = p.connect_with(p.client.context(), server.context());
  const auto first_took = std::chrono::steady_clock::now() - began;
  REQUIRE(first.client.ok());
  CHECK(first_took >= std::chrono::milliseconds(100));  // waited for a ticket, in vain
  CHECK(first_took < std::chrono::seconds(2));
  const auto second_began = std::chrono::steady_clock::now();
  Connection second = p.connect_with(p.client.context(), server.context());
  const auto second_took = std::chrono::steady_clock::now() - second_began;
  REQUIRE(second.client.ok());
  CHECK_FALSE(second.client.handshake->resumed());
  // Marked silent: the second connection does not wait for a ticket again.
  CHECK(second_took + std::chrono::milliseconds(50) < first_took);
  exchange(p.io, second);
}

TEST_CASE("a server with resumption never accepts PSK without (EC)DHE") {
  ResumingPair p;
  CHECK((SSL_CTX_get_options(p.server.context()->ssl_ctx()) & SSL_OP_ALLOW_NO_DHE_KEX) == 0);
}

}  // namespace spiffe_tunnel::tls
