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

// One record given to a fresh reader.
spiffe_tunnel::base::Result<RecordEvent> parse_one(const std::string& record) {
  tls::PostHandshakeReader reader;
  return reader.add(record);
}

}  // namespace

TEST_CASE("a NewSessionTicket is dropped, however many a record holds") {
  for (const std::string& record : {kTicket, kTicket + kTicket}) {
    auto r = parse_one(record);
    REQUIRE(r.ok());
    CHECK(r->kind == RecordEvent::Kind::kNothing);
  }
}

TEST_CASE("a KeyUpdate is accepted, with or without a request for ours") {
  auto not_requested = parse_one(key_update(0));
  REQUIRE(not_requested.ok());
  CHECK(not_requested->kind == RecordEvent::Kind::kKeyUpdate);
  CHECK_FALSE(not_requested->update_requested);

  // After tickets in the same record, as the last message under the old key.
  auto requested = parse_one(kTicket + key_update(1));
  REQUIRE(requested.ok());
  CHECK(requested->kind == RecordEvent::Kind::kKeyUpdate);
  CHECK(requested->update_requested);
}

TEST_CASE("a malformed KeyUpdate is refused with decode_error") {
  const std::string two_bytes = message(tls::kKeyUpdate, std::string("\x00\x00", 2));
  for (const std::string& record : {key_update(2), two_bytes}) {
    auto r = parse_one(record);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message == "decode_error: malformed KeyUpdate");
  }
}

TEST_CASE("a KeyUpdate that does not end its record is refused with unexpected_message") {
  // RFC 8446 §5.1: the message before a key change must end at a record boundary.
  for (const std::string& record : {key_update(0) + kTicket, key_update(1) + key_update(0),
                                    key_update(0) + kTicket.substr(0, 2)}) {
    auto r = parse_one(record);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message == "unexpected_message: KeyUpdate not at the end of its record");
  }
}

TEST_CASE("post-handshake messages split across records are reassembled") {
  tls::PostHandshakeReader reader;
  SECTION("a ticket in three pieces, the header split too") {
    for (const std::string& piece : {kTicket.substr(0, 2), kTicket.substr(2, 10)}) {
      auto r = reader.add(piece);
      REQUIRE(r.ok());
      CHECK(r->kind == RecordEvent::Kind::kNothing);
      CHECK(reader.mid_message());
    }
    auto last = reader.add(kTicket.substr(12));
    REQUIRE(last.ok());
    CHECK_FALSE(reader.mid_message());
  }
  SECTION("a record ending one message and holding the next ones") {
    const std::string stream = kTicket + kTicket + key_update(1);
    REQUIRE(reader.add(stream.substr(0, 30)).ok());
    auto r = reader.add(stream.substr(30));
    REQUIRE(r.ok());
    CHECK(r->kind == RecordEvent::Kind::kKeyUpdate);
    CHECK(r->update_requested);
    CHECK_FALSE(reader.mid_message());
  }
  SECTION("a KeyUpdate split across records") {
    const std::string ku = key_update(0);
    REQUIRE(reader.add(ku.substr(0, 3)).ok());
    auto r = reader.add(ku.substr(3));
    REQUIRE(r.ok());
    CHECK(r->kind == RecordEvent::Kind::kKeyUpdate);
  }
  SECTION("a ticket of the largest size RFC 8446 allows") {
    const std::string big =
        message(tls::kNewSessionTicket, std::string(tls::kMaxTicketMessage, 'T'));
    for (std::size_t off = 0; off < big.size(); off += tls::kMaxPlaintext) {
      REQUIRE(reader.add(big.substr(off, tls::kMaxPlaintext)).ok());
    }
    CHECK_FALSE(reader.mid_message());
  }
}

TEST_CASE("post-handshake messages that cannot be valid are refused early") {
  SECTION("an empty handshake record") {
    auto r = parse_one("");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message == "unexpected_message: empty handshake record");
  }
  SECTION("a ticket longer than any ticket can be, refused from its header") {
    std::string header = message(tls::kNewSessionTicket, "").substr(0, 1);
    header += std::string("\x02\x02\x00", 3);  // 131584 > kMaxTicketMessage
    auto r = parse_one(header);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Contains("decode_error: NewSessionTicket of"));
  }
  SECTION("another message type, refused from its first byte") {
    auto r = parse_one(std::string(1, '\x0d'));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message == "unexpected_message: post-handshake message 13");
  }
}

TEST_CASE("a record of another type inside a split handshake message is refused") {
  tls::PostHandshakeReader reader;
  REQUIRE(tls::classify_record(tls::kHandshake, kTicket.substr(0, 9), reader).ok());
  for (uint8_t type : {tls::kApplicationData, tls::kAlert}) {
    auto r = tls::classify_record(type, std::string("\x01\x00", 2), reader);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Contains("unexpected_message"));
    CHECK_THAT(r.error().message, Contains("inside a split handshake message"));
  }
}

TEST_CASE("other post-handshake messages are refused by number") {
  constexpr uint8_t kCertificateRequest = 13;
  auto r = parse_one(message(kCertificateRequest, "xyz"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "unexpected_message: post-handshake message 13");
}

TEST_CASE("a plaintext record is data, the peer's close_notify, or a refusal") {
  tls::PostHandshakeReader reader;
  const std::string close_notify(tls::kCloseNotifyAlert, sizeof(tls::kCloseNotifyAlert));
  CHECK(close_notify == std::string("\x01\x00", 2));

  auto data = tls::classify_record(tls::kApplicationData, std::string("hello"), reader);
  REQUIRE(data.ok());
  CHECK(data->kind == RecordEvent::Kind::kData);

  auto end = tls::classify_record(tls::kAlert, close_notify, reader);
  REQUIRE(end.ok());
  CHECK(end->kind == RecordEvent::Kind::kCloseNotify);

  auto fatal = tls::classify_record(tls::kAlert, std::string("\x02\x14", 2), reader);
  REQUIRE_FALSE(fatal.ok());
  CHECK(fatal.error().message == "peer sent alert bad_record_mac");

  for (const std::string& bad :
       {std::string(), std::string("\x01", 1), std::string("\x01\x00\x00", 3)}) {
    auto short_alert = tls::classify_record(tls::kAlert, bad, reader);
    REQUIRE_FALSE(short_alert.ok());
    CHECK_THAT(short_alert.error().message, Contains("decode_error: alert record of"));
  }

  auto ticket = tls::classify_record(tls::kHandshake, kTicket, reader);
  REQUIRE(ticket.ok());
  CHECK(ticket->kind == RecordEvent::Kind::kNothing);

  constexpr uint8_t kChangeCipherSpec = 20;
  auto other = tls::classify_record(kChangeCipherSpec, std::string("\x01", 1), reader);
  REQUIRE_FALSE(other.ok());
  CHECK(other.error().message == "unexpected_message: record of type 20");
}

TEST_CASE("record-layer errors carry the alert they deserve") {
  CHECK(tls::alert_for("bad_record_mac: record authentication failed") == tls::kBadRecordMac);
  CHECK(tls::alert_for("record_overflow: inner plaintext of 16386 bytes") == tls::kRecordOverflow);
  CHECK(tls::alert_for("unexpected_message: empty handshake record") == tls::kUnexpectedMessage);
  CHECK(tls::alert_for("decode_error: malformed KeyUpdate") == tls::kDecodeError);
  // The peer's own alert and a closed socket are answered with nothing.
  CHECK_FALSE(tls::alert_for("peer sent alert bad_record_mac"));
  CHECK_FALSE(tls::alert_for("peer closed the connection without close_notify"));
}

TEST_CASE("alerts are named") {
  CHECK(tls::alert_name(tls::kCloseNotify) == "close_notify");
  CHECK(tls::alert_name(20) == "bad_record_mac");
  CHECK(tls::alert_name(90) == "user_canceled");
  CHECK(tls::alert_name(111) == "alert 111");
}
