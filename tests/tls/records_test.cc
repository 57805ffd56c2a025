// Record-layer facts shared by the own and the kernel record layer: what a plaintext record of
// each type means, and the handshake messages that may follow the handshake.

#include "spiffe_tunnel/tls/records.h"

#include <string>

#include <catch2/catch.hpp>

using namespace spiffe_tunnel;
using Catch::Matchers::Contains;
using tls::RecordEvent;

namespace {

// One handshake message: type, 24-bit length, body.
std::string message(uint8_t type, const std::string& body) {
  std::string m;
  m += static_cast<char>(type);
  m += static_cast<char>(body.size() >> 16);
  m += static_cast<char>((body.size() >> 8) & 0xff);
  m += static_cast<char>(body.size() & 0xff);
  return m + body;
}

std::string key_update(uint8_t request) {
  return message(tls::kKeyUpdate, std::string(1, static_cast<char>(request)));
}

const std::string kTicket = message(tls::kNewSessionTicket, std::string(40, 'T'));

}  // namespace

TEST_CASE("a NewSessionTicket is dropped, however many a record holds") {
  for (const std::string& record : {kTicket, kTicket + kTicket}) {
    auto r = tls::parse_post_handshake(record);
    REQUIRE(r.ok());
    CHECK(r->kind == RecordEvent::Kind::kNothing);
  }
}

TEST_CASE("a KeyUpdate is accepted, with or without a request for ours") {
  auto not_requested = tls::parse_post_handshake(key_update(0));
  REQUIRE(not_requested.ok());
  CHECK(not_requested->kind == RecordEvent::Kind::kKeyUpdate);
  CHECK_FALSE(not_requested->update_requested);

  // After tickets in the same record, as the last message under the old key.
  auto requested = tls::parse_post_handshake(kTicket + key_update(1));
  REQUIRE(requested.ok());
  CHECK(requested->kind == RecordEvent::Kind::kKeyUpdate);
  CHECK(requested->update_requested);
}

TEST_CASE("a malformed KeyUpdate is refused with decode_error") {
  const std::string two_bytes = message(tls::kKeyUpdate, std::string("\x00\x00", 2));
  for (const std::string& record :
       {key_update(2), two_bytes, key_update(0) + kTicket, key_update(1) + key_update(0)}) {
    auto r = tls::parse_post_handshake(record);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message == "decode_error: malformed KeyUpdate");
  }
}

TEST_CASE("a post-handshake message that does not fit its record is refused") {
  SECTION("split across records") {
    const std::string first_half = kTicket.substr(0, kTicket.size() / 2);
    auto r = tls::parse_post_handshake(first_half);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message ==
          "unexpected_message: post-handshake message split across records");
    // A whole ticket followed by the start of the next one is refused the same way.
    auto second = tls::parse_post_handshake(kTicket + first_half);
    REQUIRE_FALSE(second.ok());
    CHECK_THAT(second.error().message, Contains("split across records"));
  }
  SECTION("shorter than a message header") {
    for (const std::string& record : {std::string(), std::string("\x04\x00\x00", 3)}) {
      auto r = tls::parse_post_handshake(record);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().message == "unexpected_message: truncated post-handshake message");
    }
  }
}

TEST_CASE("other post-handshake messages are refused by number") {
  constexpr uint8_t kCertificateRequest = 13;
  auto r = tls::parse_post_handshake(message(kCertificateRequest, "xyz"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "unexpected_message: post-handshake message 13");
}

TEST_CASE("a plaintext record is data, the peer's close_notify, or a refusal") {
  const std::string close_notify(tls::kCloseNotifyAlert, sizeof(tls::kCloseNotifyAlert));
  CHECK(close_notify == std::string("\x01\x00", 2));

  auto data = tls::classify_record(tls::kApplicationData, std::string("hello"));
  REQUIRE(data.ok());
  CHECK(data->kind == RecordEvent::Kind::kData);

  auto end = tls::classify_record(tls::kAlert, close_notify);
  REQUIRE(end.ok());
  CHECK(end->kind == RecordEvent::Kind::kCloseNotify);

  auto fatal = tls::classify_record(tls::kAlert, std::string("\x02\x14", 2));
  REQUIRE_FALSE(fatal.ok());
  CHECK(fatal.error().message == "peer sent alert bad_record_mac");

  auto short_alert = tls::classify_record(tls::kAlert, std::string("\x01", 1));
  REQUIRE_FALSE(short_alert.ok());
  CHECK(short_alert.error().message == "peer sent alert alert 255");

  auto ticket = tls::classify_record(tls::kHandshake, kTicket);
  REQUIRE(ticket.ok());
  CHECK(ticket->kind == RecordEvent::Kind::kNothing);

  constexpr uint8_t kChangeCipherSpec = 20;
  auto other = tls::classify_record(kChangeCipherSpec, std::string("\x01", 1));
  REQUIRE_FALSE(other.ok());
  CHECK(other.error().message == "unexpected_message: record of type 20");
}

TEST_CASE("alerts are named") {
  CHECK(tls::alert_name(tls::kCloseNotify) == "close_notify");
  CHECK(tls::alert_name(20) == "bad_record_mac");
  CHECK(tls::alert_name(90) == "user_canceled");
  CHECK(tls::alert_name(111) == "alert 111");
}
