// The userspace TLS 1.3 record layer: RecordCipher on its own, and the stream running it
// (RecordLayer::kUserspace) against a plain OpenSSL peer (an independent implementation of the same records, KeyUpdate included).

#include "spiffe_tunnel/tls/record_cipher.h"

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>

#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tls/handshake.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tls/tls_stream.h"
#include "tls/test_tls.h"
#include "tls/openssl_peer.h"
#include "tls/tls_pair.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::tls::testing;
using Catch::Matchers::Contains;
using tls::RecordCipher;
using tls::RecordLayer;

// g++ 12 reports asio's coroutine frames as freed with a "mismatched" operator delete in some
// inlining contexts (asio's awaitable_frame_base declares the matching operator new and delete);
// a false positive of that compiler, silenced for this file only.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

// g++ 12 may evaluate a co_await twice when it sits inside an assertion macro's expression, so
// every co_await below stores its result before a CHECK looks at it.

namespace {

constexpr const char* kSuites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"};

std::vector<unsigned char> secret_for(std::string_view suite, unsigned char fill) {
  return std::vector<unsigned char>(suite == "TLS_AES_256_GCM_SHA384" ? 48 : 32, fill);
}

// A sealing and an opening cipher over the same secret: the two ends of one direction.
struct Direction {
  std::unique_ptr<RecordCipher> seal;
  std::unique_ptr<RecordCipher> open;

  explicit Direction(std::string_view suite, unsigned char fill = 7) {
    const auto secret = secret_for(suite, fill);
    auto s = RecordCipher::create(suite, secret, RecordCipher::Direction::kSeal);
    auto o = RecordCipher::create(suite, secret, RecordCipher::Direction::kOpen);
    REQUIRE(s.ok());
    REQUIRE(o.ok());
    seal = std::move(s).value();
    open = std::move(o).value();
  }

  std::vector<char> record(uint8_t type, std::string_view data) {
    std::vector<char> out(data.size() + tls::kRecordOverhead);
    auto n = seal->seal(type, data, out.data());
    REQUIRE(n.ok());
    REQUIRE(*n == out.size());
    return out;
  }
};


}  // namespace

TEST_CASE("records sealed by one end open at the other, for every TLS 1.3 suite") {
  for (const char* suite : kSuites) {
    INFO(suite);
    Direction d(suite);
    for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, tls::kMaxPlaintext}) {
      const std::string data = pattern(size);
      auto rec = d.record(tls::kApplicationData, data);
      // The outer header: application_data, legacy version 3.3, length of the protected body.
      CHECK(static_cast<uint8_t>(rec[0]) == tls::kApplicationData);
      CHECK(rec[1] == 3);
      CHECK(rec[2] == 3);
      CHECK(((static_cast<uint8_t>(rec[3]) << 8) | static_cast<uint8_t>(rec[4])) ==
            static_cast<int>(size + 1 + tls::kAeadTag));
      if (size > 16) {
        CHECK(std::string(rec.data() + tls::kRecordHeader, 16) != data.substr(0, 16));
      }
      // Opened in place, as the stream does when the caller's buffer is too small.
      auto opened = d.open->open(rec, rec.data() + tls::kRecordHeader);
      REQUIRE(opened.ok());
      CHECK(opened->type == tls::kApplicationData);
      CHECK(opened->size == size);
      CHECK(std::string(rec.data() + tls::kRecordHeader, size) == data);
    }
    CHECK(d.seal->sequence() == 4);
    CHECK(d.open->sequence() == 4);
    // The inner content type is protected too.
    auto alert = d.record(tls::kAlert, std::string_view("\x01\x00", 2));
    CHECK(static_cast<uint8_t>(alert[0]) == tls::kApplicationData);
    std::vector<char> out(alert.size());
    auto opened = d.open->open(alert, out.data());
    REQUIRE(opened.ok());
    CHECK(opened->type == tls::kAlert);
    CHECK(opened->size == 2);
  }
}

TEST_CASE("a flipped bit, a replayed or a reordered record fails authentication") {
  for (const char* suite : kSuites) {
    INFO(suite);
    Direction d(suite);
    std::vector<char> out(100);
    SECTION("flipped ciphertext bit") {
      auto rec = d.record(tls::kApplicationData, "hello");
      rec[tls::kRecordHeader + 2] ^= 0x10;
      auto r = d.open->open(rec, out.data());
      REQUIRE_FALSE(r.ok());
      CHECK_THAT(r.error().message, Contains("bad_record_mac"));
    }
    SECTION("flipped tag bit") {
      auto rec = d.record(tls::kApplicationData, "hello");
      rec.back() ^= 0x01;
      CHECK_FALSE(d.open->open(rec, out.data()).ok());
    }
    SECTION("header (additional data) changed") {
      auto rec = d.record(tls::kApplicationData, "hello");
      rec[2] = 1;  // legacy version 3.1
      CHECK_FALSE(d.open->open(rec, out.data()).ok());
    }
    SECTION("replayed") {
      auto rec = d.record(tls::kApplicationData, "once");
      auto copy = rec;
      REQUIRE(d.open->open(rec, out.data()).ok());
      auto r = d.open->open(copy, out.data());
      REQUIRE_FALSE(r.ok());
      CHECK_THAT(r.error().message, Contains("bad_record_mac"));
    }
    SECTION("reordered") {
      auto first = d.record(tls::kApplicationData, "first");
      auto second = d.record(tls::kApplicationData, "second");
      CHECK_FALSE(d.open->open(second, out.data()).ok());
    }
    SECTION("sealed under another secret") {
      Direction other(suite, 8);
      auto rec = other.record(tls::kApplicationData, "hello");
      CHECK_FALSE(d.open->open(rec, out.data()).ok());
    }
  }
}

TEST_CASE("KeyUpdate moves each end to the next secret and restarts the sequence") {
  for (const char* suite : kSuites) {
    INFO(suite);
    Direction d(suite);
    std::vector<char> out(100);
    auto before = d.record(tls::kApplicationData, "gen0");
    REQUIRE(d.open->open(before, out.data()).ok());
    REQUIRE(d.seal->next_generation().ok());
    auto after = d.record(tls::kApplicationData, "gen1");
    SECTION("the reader updates too: records open") {
      REQUIRE(d.open->next_generation().ok());
      auto r = d.open->open(after, out.data());
      REQUIRE(r.ok());
      CHECK(std::string(out.data(), r->size) == "gen1");
      CHECK(d.open->sequence() == 1);
      CHECK(d.open->generation() == 1);
    }
    SECTION("a reader still on the old key refuses them") {
      CHECK_FALSE(d.open->open(after, out.data()).ok());
    }
  }
}

TEST_CASE("malformed records are refused with the alert they deserve") {
  Direction d("TLS_AES_128_GCM_SHA256");
  std::vector<char> out(tls::kMaxCiphertext + 100);
  SECTION("an unprotected record after the handshake") {
    std::vector<char> rec = {tls::kAlert, 3, 3, 0, 2, 2, 40};
    auto r = d.open->open(rec, out.data());
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Contains("unexpected_message"));
  }
  SECTION("a body longer than 2^14 + 256") {
    std::vector<char> rec(tls::kRecordHeader + tls::kMaxCiphertext + 1, 0);
    rec[0] = tls::kApplicationData;
    auto r = d.open->open(rec, out.data());
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Contains("record_overflow"));
  }
  SECTION("a body shorter than its tag") {
    std::vector<char> rec = {tls::kApplicationData, 3, 3, 0, 3, 1, 2, 3};
    auto r = d.open->open(rec, out.data());
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Contains("decode_error"));
  }
  SECTION("a plaintext of only padding has no content type") {
    auto rec = d.record(0, "");
    auto r = d.open->open(rec, out.data());
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Contains("unexpected_message"));
  }
  SECTION("a plaintext over 2^14 bytes") {
    // Sealed by hand: the sealing side refuses to make one.
    std::vector<char> too_big(tls::kMaxPlaintext + 1);
    CHECK_FALSE(d.seal->seal(tls::kApplicationData, too_big, out.data()).ok());
  }
}

TEST_CASE("unsupported suites and wrong secret sizes are named") {
  const std::vector<unsigned char> secret(32, 1);
  auto r = RecordCipher::create("TLS_AES_128_CCM_SHA256", secret, RecordCipher::Direction::kSeal);
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Contains("TLS_AES_128_CCM_SHA256"));
  auto s = RecordCipher::create("TLS_AES_256_GCM_SHA384", secret, RecordCipher::Direction::kSeal);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(s.error().message, Contains("32 bytes, expected 48"));
}

// ---- The stream's record layer against OpenSSL's ----------------------------------------------

namespace {

asio::awaitable<void> read_once(tls::TlsStream& s, std::size_t& n, asio::error_code& ec) {
  char buf[256];
  n = co_await s.read_some({buf, sizeof(buf)}, ec);
}

// Two spiffe-tunnel streams after a TLS 1.3 handshake over loopback.
struct EstablishedPair : PairSetup {
  Connection c = connect();
  tls::TlsStream* client = nullptr;
  tls::TlsStream* server = nullptr;

  EstablishedPair() {
    REQUIRE(c.client.ok());
    REQUIRE(c.server.ok());
    client = c.client.stream.get();
    server = c.server.stream.get();
  }
};

// What the OpenSSL side saw, returned from its thread.
struct PeerReport {
  bool handshake = false;
  std::string hello;
  std::string ack;
  std::string bulk;
  bool saw_close_notify = false;
  std::string errors;
};

}  // namespace

// spiffe-tunnel's side of the OpenSSL interop conversation (see the peer thread below).
asio::awaitable<void> talk_to_openssl(tls::Handshake& handshake, const std::string& suite,
                                      const std::string& bulk, bool& done) {
  std::unique_ptr<tls::TlsStream> stream = co_await handshake.run();
  INFO(handshake.failure().detail);
  REQUIRE(stream);
  tls::TlsStream& s = *stream;
  CHECK(s.info().record_layer == RecordLayer::kUserspace);
  CHECK(s.info().cipher == suite);
  CHECK(s.info().protocol == "TLSv1.3");
  asio::error_code ec;
  co_await s.write_all(std::string_view("hello"), ec);
  REQUIRE_FALSE(ec);
  std::string got;
  char buf[64];
  while (got.size() < 7) {
    const std::size_t n = co_await s.read_some({buf, sizeof(buf)}, ec);
    REQUIRE_FALSE(ec);
    REQUIRE(n > 0);
    got.append(buf, n);
  }
  CHECK(got == "updated");
  co_await s.write_all(std::string_view("ack"), ec);
  REQUIRE_FALSE(ec);
  // A megabyte each way; the read buffer is smaller than a record, so plaintext waits in
  // the stream between reads.
  std::string in;
  char small[1000];
  while (in.size() < bulk.size()) {
    const std::size_t n = co_await s.read_some({small, sizeof(small)}, ec);
    REQUIRE_FALSE(ec);
    REQUIRE(n > 0);
    in.append(small, n);
  }
  CHECK((in == bulk));
  co_await s.write_all(bulk, ec);
  REQUIRE_FALSE(ec);
  // The peer's close_notify is a clean end of stream; ours answers it.
  const std::size_t n = co_await s.read_some({buf, sizeof(buf)}, ec);
  CHECK(n == 0);
  CHECK_FALSE(ec);
  co_await s.shutdown_write(ec);
  CHECK_FALSE(ec);
  done = true;
}

TEST_CASE("the userspace record layer interoperates with OpenSSL's, KeyUpdate included") {
  Pki pki;
  const bool we_are_server = GENERATE(true, false);
  const std::string suite = GENERATE(std::string("TLS_AES_128_GCM_SHA256"),
                                     std::string("TLS_AES_256_GCM_SHA384"),
                                     std::string("TLS_CHACHA20_POLY1305_SHA256"));
  INFO((we_are_server ? "spiffe-tunnel is the server" : "spiffe-tunnel is the client"));
  INFO(suite);

  Side side(interop_options(we_are_server, suite),
            snapshot_of({we_are_server ? pki.server : pki.client}, {&pki.example}));
  auto context = side.context();  // before the peer thread starts: Catch2 is single-threaded

  asio::io_context io;
  auto [a, b] = connected_pair(io);
  // The OpenSSL peer owns its end as a blocking descriptor.
  const int peer_fd = b.release();
  const std::string bulk = pattern(1024 * 1024 + 3);

  auto peer_done = std::async(std::launch::async, [&, peer_fd] {
    PeerReport r;
    OpenSslPeer peer(!we_are_server, we_are_server ? *pki.client : *pki.server, peer_fd, suite);
    r.handshake = peer.ssl && SSL_do_handshake(peer.ssl.get()) == 1;
    if (r.handshake) {
      r.hello = peer.read_exactly(5);
      // Ask for a KeyUpdate in return; it goes out with the next record.
      SSL_key_update(peer.ssl.get(), SSL_KEY_UPDATE_REQUESTED);
      peer.write("updated");
      // Readable only if our KeyUpdate (and our new key) are right.
      r.ack = peer.read_exactly(3);
      peer.write(bulk);
      r.bulk = peer.read_exactly(bulk.size());
      SSL_shutdown(peer.ssl.get());  // our close_notify
      char byte;
      std::size_t k = 0;
      r.saw_close_notify = SSL_read_ex(peer.ssl.get(), &byte, 1, &k) == 0 &&
                           SSL_get_error(peer.ssl.get(), 0) == SSL_ERROR_ZERO_RETURN;
    }
    r.errors = base::drain_openssl_errors();
    ::close(peer_fd);
    return r;
  });

  std::unique_ptr<tls::Handshake> handshake = handshake_on(std::move(a), context);
  bool done = false;
  asio::co_spawn(io, talk_to_openssl(*handshake, suite, bulk, done), rethrow);
  run_bounded(io, std::chrono::seconds(20));
  const PeerReport r = peer_done.get();
  INFO("OpenSSL peer errors: " << r.errors);
  CHECK(done);
  CHECK(r.handshake);
  CHECK(r.hello == "hello");
  CHECK(r.ack == "ack");
  CHECK((r.bulk == bulk));
  CHECK(r.saw_close_notify);
}

namespace {

// Records the length of every NewSessionTicket an OpenSSL peer writes.
void note_ticket(int write_p, int, int content_type, const void* buf, size_t len, SSL*,
                 void* arg) {
  if (write_p == 1 && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
      static_cast<const unsigned char*>(buf)[0] == tls::kNewSessionTicket) {
    static_cast<std::vector<std::size_t>*>(arg)->push_back(len);
  }
}

asio::awaitable<void> read_after_tickets(tls::Handshake& handshake, std::string& got,
                                         std::string& detail) {
  std::unique_ptr<tls::TlsStream> stream = co_await handshake.run();
  if (!stream) {
    detail = handshake.failure().detail;
    co_return;
  }
  detail = std::string(record_layer_name(stream->info().record_layer));
  asio::error_code ec;
  char buf[64];
  while (got.size() < 5) {
    const std::size_t n = co_await stream->read_some({buf, sizeof(buf)}, ec);
    if (ec || n == 0) {
      detail += ": " + stream->last_error();
      co_return;
    }
    got.append(buf, n);
  }
  co_await stream->write_all(std::string_view("ack"), ec);
}

}  // namespace

TEST_CASE("the userspace record layer reads OpenSSL's tickets split across records") {
  // OpenSSL writes a handshake message in records of max_send_fragment bytes; its stateless
  // tickets carry the session with our certificate, so each is far larger than 512 bytes.
  Pki pki;
  Side side(options_for(tls::Role::kClient, allow_any_verified()),
            snapshot_of({pki.client}, {&pki.example}));
  auto context = side.context();
  asio::io_context io;
  auto [a, b] = connected_pair(io);
  const int peer_fd = b.release();
  std::vector<std::size_t> tickets;

  auto peer_done = std::async(std::launch::async, [&, peer_fd] {
    PeerReport r;
    OpenSslPeer peer(true, *pki.server, peer_fd, "TLS_AES_128_GCM_SHA256");
    if (peer.ssl) {
      SSL_set_max_send_fragment(peer.ssl.get(), 512);
      SSL_set_num_tickets(peer.ssl.get(), 4);
      SSL_set_msg_callback(peer.ssl.get(), note_ticket);
      SSL_set_msg_callback_arg(peer.ssl.get(), &tickets);
    }
    r.handshake = peer.ssl && SSL_do_handshake(peer.ssl.get()) == 1;
    if (r.handshake) {
      peer.write("hello");
      r.ack = peer.read_exactly(3);
    }
    r.errors = base::drain_openssl_errors();
    ::close(peer_fd);
    return r;
  });

  std::unique_ptr<tls::Handshake> handshake = handshake_on(std::move(a), context);
  std::string got;
  std::string detail;
  asio::co_spawn(io, read_after_tickets(*handshake, got, detail), rethrow);
  run_bounded(io, std::chrono::seconds(20));
  const PeerReport r = peer_done.get();
  INFO("OpenSSL peer errors: " << r.errors << "; our stream: " << detail);
  REQUIRE(r.handshake);
  CHECK(detail == "userspace");
  CHECK(got == "hello");
  CHECK(r.ack == "ack");
  REQUIRE(tickets.size() == 4);
  for (std::size_t len : tickets) {
    CHECK(len > 512);  // each one crossed at least one record boundary
  }
}

TEST_CASE("a forged record on an established connection fails the read, never delivers data") {
  EstablishedPair p;
  asio::io_context& io = p.io;
  REQUIRE(p.server->info().record_layer == RecordLayer::kUserspace);

  // Forge a well-formed application-data record of random bytes straight onto the wire.
  std::vector<unsigned char> forged(tls::kRecordHeader + 64);
  forged[0] = tls::kApplicationData;
  forged[1] = forged[2] = 3;
  forged[3] = 0;
  forged[4] = 64;
  REQUIRE(RAND_bytes(forged.data() + tls::kRecordHeader, 64) == 1);
  std::string expected;
  SECTION("a forged record") { expected = "bad_record_mac"; }
  SECTION("a record header claiming more than 2^14 + 256 bytes") {
    forged[3] = 0x48;
    expected = "record_overflow";
  }
  SECTION("a record truncated by the end of the connection") {
    forged[4] = 200;
    expected = "in the middle of a record";
  }
  REQUIRE(::send(p.client->socket().native_handle(), forged.data(), forged.size(),
                 MSG_NOSIGNAL) == static_cast<ssize_t>(forged.size()));
  ::shutdown(p.client->socket().native_handle(), SHUT_WR);

  tls::TlsStream& srv = *p.server;
  std::size_t n = 1;
  asio::error_code ec;
  asio::co_spawn(io, read_once(srv, n, ec), rethrow);
  run_bounded(io);
  CHECK(n == 0);
  CHECK(ec);
  CHECK_THAT(srv.last_error(), Contains(expected));
}

TEST_CASE("a partial record makes the reader wait for the socket, not spin") {
  EstablishedPair p;
  asio::io_context& io = p.io;
  tls::TlsStream& srv = *p.server;
  REQUIRE(srv.info().record_layer == RecordLayer::kUserspace);

  // The first 15 bytes of a 69-byte record.
  std::vector<unsigned char> record(tls::kRecordHeader + 64, 0x5a);
  record[0] = tls::kApplicationData;
  record[1] = record[2] = 3;
  record[3] = 0;
  record[4] = 64;
  const int fd = p.client->socket().native_handle();
  REQUIRE(::send(fd, record.data(), 15, MSG_NOSIGNAL) == 15);
  char buf[128];
  asio::error_code ec;
  // Once the 15 bytes have arrived, try_read takes in the partial record and has nothing to give.
  pollfd readable{srv.socket().native_handle(), POLLIN, 0};
  REQUIRE(::poll(&readable, 1, 5000) == 1);
  CHECK(srv.try_read({buf, sizeof(buf)}, ec) == 0);
  REQUIRE(ec == asio::error::would_block);
  REQUIRE(srv.has_buffered_input());

  bool woke = false;
  asio::error_code wec;
  asio::co_spawn(
      io,
      [&srv, &woke, &wec]() -> asio::awaitable<void> {
        co_await srv.wait_readable(wec);
        woke = true;
      },
      rethrow);
  io.run_for(std::chrono::milliseconds(200));
  CHECK_FALSE(woke);  // nothing more on the socket: it must still be waiting
  // The rest arrives: the wait ends, and the (forged) record is refused.
  REQUIRE(::send(fd, record.data() + 15, record.size() - 15, MSG_NOSIGNAL) ==
          static_cast<ssize_t>(record.size() - 15));
  run_bounded(io);
  CHECK(woke);
  CHECK_FALSE(wec);
  CHECK(srv.try_read({buf, sizeof(buf)}, ec) == 0);
  CHECK(ec);
  CHECK_THAT(srv.last_error(), Contains("bad_record_mac"));
}
