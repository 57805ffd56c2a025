// The own TLS 1.3 record layer held to RFC 8446 at its edges: a stream fed records crafted here
// (sealed with the real cipher under test keys, or by hand for what the cipher refuses to make)
// latches its first fatal error, answers it with the alert the RFC names, and reassembles the
// post-handshake messages a peer splits across records.

#include "tls/record_stream.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>

#include <asio/co_spawn.hpp>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/tls/record_cipher.h"
#include "spiffe_tunnel/tls/records.h"
#include "tls/test_tls.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::tls::testing;
using Catch::Matchers::Contains;
using tls::RecordCipher;

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // see record_layer_test.cc

namespace {

constexpr std::string_view kSuite = "TLS_AES_128_GCM_SHA256";
const std::vector<unsigned char> kPeerSecret(32, 0x11);  // the peer's direction (we open)
const std::vector<unsigned char> kOwnSecret(32, 0x22);   // ours (the peer opens)

std::unique_ptr<RecordCipher> cipher(const std::vector<unsigned char>& secret,
                                     RecordCipher::Direction direction) {
  auto c = RecordCipher::create(kSuite, secret, direction);
  REQUIRE(c.ok());
  return std::move(c).value();
}

// One handshake message: type, 24-bit length, body.
std::string message(uint8_t type, const std::string& body) {
  std::string m(1, static_cast<char>(type));
  m += static_cast<char>(body.size() >> 16);
  m += static_cast<char>((body.size() >> 8) & 0xff);
  m += static_cast<char>(body.size() & 0xff);
  return m + body;
}

// A TLS 1.3 record around any TLSInnerPlaintext (content, type and padding as given), sealed by
// hand with AES-128-GCM from `secret` at sequence `seq`: the records RecordCipher never makes.
std::string seal_inner(const std::vector<unsigned char>& secret, uint64_t seq,
                       const std::string& inner) {
  unsigned char key[16];
  unsigned char iv[12];
  REQUIRE(tls::hkdf_expand_label("SHA256", secret, "key", key, sizeof(key)).ok());
  REQUIRE(tls::hkdf_expand_label("SHA256", secret, "iv", iv, sizeof(iv)).ok());
  for (int i = 0; i < 8; ++i) {
    iv[11 - i] ^= static_cast<unsigned char>(seq >> (8 * i));
  }
  const std::size_t body = inner.size() + tls::kAeadTag;
  std::string rec = {tls::kApplicationData, 3, 3, static_cast<char>(body >> 8),
                     static_cast<char>(body & 0xff)};
  rec.resize(tls::kRecordHeader + body);
  auto* out = reinterpret_cast<unsigned char*>(rec.data());
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      EVP_CIPHER_CTX_free);
  int len = 0;
  REQUIRE(EVP_EncryptInit_ex(ctx.get(), EVP_aes_128_gcm(), nullptr, key, iv) == 1);
  REQUIRE(EVP_EncryptUpdate(ctx.get(), nullptr, &len, out, tls::kRecordHeader) == 1);
  REQUIRE(EVP_EncryptUpdate(ctx.get(), out + tls::kRecordHeader, &len,
                            reinterpret_cast<const unsigned char*>(inner.data()),
                            static_cast<int>(inner.size())) == 1);
  REQUIRE(EVP_EncryptFinal_ex(ctx.get(), out + tls::kRecordHeader + inner.size(), &len) == 1);
  REQUIRE(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, tls::kAeadTag,
                              out + tls::kRecordHeader + inner.size()) == 1);
  return rec;
}

// Our RecordStream on one end of a loopback connection; the test plays the peer on the other
// end with the matching ciphers, writing and reading raw records.
struct CraftedPeer {
  asio::io_context io;
  std::unique_ptr<tls::TlsStream> stream;
  asio::ip::tcp::socket peer{io};
  std::unique_ptr<RecordCipher> seal = cipher(kPeerSecret, RecordCipher::Direction::kSeal);
  std::unique_ptr<RecordCipher> open = cipher(kOwnSecret, RecordCipher::Direction::kOpen);

  CraftedPeer() {
    auto [ours, theirs] = connected_pair(io);
    peer = std::move(theirs);
    stream = std::make_unique<tls::RecordStream>(
        base::StreamSocket(std::move(ours)), tls::ConnectionInfo{},
        cipher(kPeerSecret, RecordCipher::Direction::kOpen),
        cipher(kOwnSecret, RecordCipher::Direction::kSeal));
  }

  void send_raw(const std::string& bytes) {
    REQUIRE(::send(peer.native_handle(), bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(bytes.size()));
  }
  void send(uint8_t type, const std::string& data) {
    std::string rec(data.size() + tls::kRecordOverhead, '\0');
    auto n = seal->seal(type, data, rec.data());
    REQUIRE(n.ok());
    send_raw(rec);
  }

  // Reads what our stream delivers until `want` bytes or an error.
  std::string read(std::size_t want, asio::error_code& ec) {
    std::string got;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          char buf[512];
          while (got.size() < want) {
            const std::size_t n = co_await stream->read_some({buf, sizeof(buf)}, ec);
            if (ec || n == 0) {
              co_return;
            }
            got.append(buf, n);
          }
        },
        rethrow);
    run_bounded(io);
    return got;
  }

  // Has our stream write `data`; returns the write's error.
  asio::error_code write(std::string_view data) {
    asio::error_code ec;
    asio::co_spawn(
        io, [&]() -> asio::awaitable<void> { co_await stream->write_all(data, ec); }, rethrow);
    run_bounded(io);
    return ec;
  }

  // The next record our stream sent, opened: {inner type, plaintext}; type 0 when none came
  // within a second.
  std::pair<uint8_t, std::string> receive() {
    std::string rec(tls::kRecordHeader, '\0');
    if (!read_exactly(rec.data(), tls::kRecordHeader)) {
      return {0, ""};
    }
    const std::size_t body =
        static_cast<std::size_t>(static_cast<uint8_t>(rec[3])) << 8 | static_cast<uint8_t>(rec[4]);
    rec.resize(tls::kRecordHeader + body);
    REQUIRE(read_exactly(rec.data() + tls::kRecordHeader, body));
    std::string out(body, '\0');
    auto opened = open->open(rec, out.data());
    INFO((opened.ok() ? "" : opened.error().message));
    REQUIRE(opened.ok());
    return {opened->type, out.substr(0, opened->size)};
  }

  bool read_exactly(char* out, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      pollfd p{peer.native_handle(), POLLIN, 0};
      if (::poll(&p, 1, 1000) != 1) {
        return false;
      }
      const ssize_t k = ::recv(peer.native_handle(), out + got, n - got, 0);
      if (k <= 0) {
        return false;
      }
      got += static_cast<std::size_t>(k);
    }
    return true;
  }

  // The read fails with `reason`, and the peer receives the fatal alert `alert`.
  void require_fatal(const std::string& reason, uint8_t alert) {
    asio::error_code ec;
    CHECK(read(1, ec).empty());
    REQUIRE(ec);
    CHECK_THAT(stream->last_error(), Contains(reason));
    const auto [type, body] = receive();
    CHECK(type == tls::kAlert);
    CHECK(body == std::string{static_cast<char>(tls::kAlertFatal), static_cast<char>(alert)});
  }
};

std::string forged_record() {
  std::string rec = {tls::kApplicationData, 3, 3, 0, 64};
  rec.resize(tls::kRecordHeader + 64);
  REQUIRE(RAND_bytes(reinterpret_cast<unsigned char*>(rec.data() + tls::kRecordHeader), 64) == 1);
  return rec;
}

}  // namespace

TEST_CASE("a failed decrypt ends reading for good, even when valid records follow") {
  CraftedPeer p;
  p.send_raw(forged_record());
  p.require_fatal("bad_record_mac", tls::kBadRecordMac);
  // The record the peer would have sent first: it authenticates under sequence 0, which the
  // failed record did not use up. Nothing of it may come out now.
  p.send(tls::kApplicationData, "after the forgery");
  for (int i = 0; i < 2; ++i) {
    asio::error_code ec;
    CHECK(p.read(1, ec).empty());
    CHECK(ec);
    CHECK_THAT(p.stream->last_error(), Contains("bad_record_mac"));
  }
  // Nothing more is sent after the fatal alert: no close_notify, no data.
  CHECK(p.write("x"));
}

TEST_CASE("an opening cipher refuses every record after its first failure") {
  auto seal = cipher(kPeerSecret, RecordCipher::Direction::kSeal);
  auto open = cipher(kPeerSecret, RecordCipher::Direction::kOpen);
  std::string forged = forged_record();
  std::vector<char> out(tls::kMaxCiphertext);
  auto first = open->open(forged, out.data());
  REQUIRE_FALSE(first.ok());
  std::string good(5 + tls::kRecordOverhead, '\0');
  REQUIRE(seal->seal(tls::kApplicationData, "valid", good.data()).ok());
  auto later = open->open(good, out.data());
  REQUIRE_FALSE(later.ok());
  CHECK_THAT(later.error().message, Contains("bad_record_mac"));
}

TEST_CASE("an inner plaintext over 2^14 + 1 bytes is refused with record_overflow") {
  CraftedPeer p;
  SECTION("padding makes it too long") {
    std::string inner(tls::kMaxPlaintext, 'd');
    inner += static_cast<char>(tls::kApplicationData);
    inner += '\0';  // 2^14 + 2 bytes
    p.send_raw(seal_inner(kPeerSecret, 0, inner));
    p.require_fatal("record_overflow: inner plaintext of 16386 bytes", tls::kRecordOverflow);
  }
  SECTION("exactly 2^14 + 1 bytes is fine") {
    std::string inner(tls::kMaxPlaintext, 'd');
    inner += static_cast<char>(tls::kApplicationData);
    p.send_raw(seal_inner(kPeerSecret, 0, inner));
    asio::error_code ec;
    CHECK(p.read(tls::kMaxPlaintext, ec).size() == tls::kMaxPlaintext);
    CHECK_FALSE(ec);
  }
}

TEST_CASE("a zero-length handshake record is refused with unexpected_message") {
  CraftedPeer p;
  p.send(tls::kHandshake, "");
  p.require_fatal("unexpected_message: empty handshake record", tls::kUnexpectedMessage);
}

TEST_CASE("each fatal record error is answered with the alert RFC 8446 names") {
  CraftedPeer p;
  SECTION("a malformed alert: decode_error") {
    p.send(tls::kAlert, std::string(1, '\x01'));
    p.require_fatal("decode_error", tls::kDecodeError);
  }
  SECTION("a malformed KeyUpdate: decode_error") {
    p.send(tls::kHandshake, message(tls::kKeyUpdate, std::string(1, '\x07')));
    p.require_fatal("decode_error: malformed KeyUpdate", tls::kDecodeError);
  }
  SECTION("an unknown inner content type: unexpected_message") {
    p.send(99, "x");
    p.require_fatal("unexpected_message: record of type 99", tls::kUnexpectedMessage);
  }
  SECTION("data inside a split handshake message: unexpected_message") {
    p.send(tls::kHandshake, message(tls::kNewSessionTicket, std::string(100, 'T')).substr(0, 50));
    p.send(tls::kApplicationData, "interleaved");
    p.require_fatal("inside a split handshake message", tls::kUnexpectedMessage);
  }
  SECTION("an outer record over 2^14 + 256 bytes: record_overflow") {
    p.send_raw(std::string{tls::kApplicationData, 3, 3, 0x48, 0});
    p.require_fatal("record_overflow", tls::kRecordOverflow);
  }
  SECTION("the peer's own fatal alert is not answered") {
    p.send(tls::kAlert, std::string{static_cast<char>(tls::kAlertFatal), 40});
    asio::error_code ec;
    CHECK(p.read(1, ec).empty());
    CHECK_THAT(p.stream->last_error(), Contains("peer sent alert handshake_failure"));
    CHECK(p.receive().first == 0);
  }
}

TEST_CASE("post-handshake messages split across records, and several per record, are followed") {
  CraftedPeer p;
  const std::string ticket = message(tls::kNewSessionTicket, std::string(3000, 'T'));
  const std::string key_update_requested = message(tls::kKeyUpdate, std::string(1, '\x01'));
  // A ticket split across three records, then one record holding two whole tickets and a
  // KeyUpdate that asks for ours.
  p.send(tls::kHandshake, ticket.substr(0, 2));
  p.send(tls::kHandshake, ticket.substr(2, 1000));
  p.send(tls::kHandshake, ticket.substr(1002));
  p.send(tls::kHandshake, ticket + ticket + key_update_requested);
  REQUIRE(p.seal->next_generation().ok());
  p.send(tls::kApplicationData, "after the update");
  asio::error_code ec;
  CHECK(p.read(16, ec) == "after the update");
  CHECK_FALSE(ec);

  // Our next write starts with the KeyUpdate the peer asked for, then data under the new key.
  REQUIRE_FALSE(p.write("reply"));
  const auto [type, body] = p.receive();
  CHECK(type == tls::kHandshake);
  CHECK(body == message(tls::kKeyUpdate, std::string(1, '\0')));
  REQUIRE(p.open->next_generation().ok());
  const auto [data_type, data] = p.receive();
  CHECK(data_type == tls::kApplicationData);
  CHECK(data == "reply");
}
