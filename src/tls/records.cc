#include "spiffe_tunnel/tls/records.h"

namespace spiffe_tunnel::tls {

std::string alert_name(uint8_t d) {
  switch (d) {
    case kCloseNotify: return "close_notify";
    case 10: return "unexpected_message";
    case 20: return "bad_record_mac";
    case 22: return "record_overflow";
    case 40: return "handshake_failure";
    case 42: return "bad_certificate";
    case 46: return "certificate_unknown";
    case 48: return "unknown_ca";
    case 50: return "decode_error";
    case 51: return "decrypt_error";
    case 80: return "internal_error";
    case 90: return "user_canceled";
    default: return "alert " + std::to_string(d);
  }
}

base::Result<RecordEvent> parse_post_handshake(std::span<const char> record) {
  // A handshake record is never empty (RFC 8446 §5.1); it holds whole messages here, since the
  // messages that may follow the handshake are small and nobody splits them.
  if (record.empty()) {
    return base::make_error("unexpected_message: truncated post-handshake message");
  }
  RecordEvent event{RecordEvent::Kind::kNothing};
  std::size_t off = 0;
  while (off < record.size()) {
    if (record.size() - off < 4) {
      return base::make_error("unexpected_message: truncated post-handshake message");
    }
    const auto* m = reinterpret_cast<const unsigned char*>(record.data() + off);
    const std::size_t len =
        static_cast<std::size_t>(m[1]) << 16 | static_cast<std::size_t>(m[2]) << 8 | m[3];
    if (len > record.size() - off - 4) {
      return base::make_error("unexpected_message: post-handshake message split across records");
    }
    if (m[0] == kNewSessionTicket) {
      off += 4 + len;  // sessions are never resumed; a third-party server's ticket is dropped
      continue;
    }
    if (m[0] != kKeyUpdate) {
      return base::make_error("unexpected_message: post-handshake message " +
                              std::to_string(m[0]));
    }
    // KeyUpdate (RFC 8446 §4.6.3): one byte, and the last message under the old key.
    if (len != 1 || m[4] > 1 || off + 5 != record.size()) {
      return base::make_error("decode_error: malformed KeyUpdate");
    }
    event = {RecordEvent::Kind::kKeyUpdate, m[4] == 1};
    off += 5;
  }
  return event;
}

base::Result<RecordEvent> classify_record(uint8_t type, std::span<const char> plaintext) {
  switch (type) {
    case kApplicationData:
      return RecordEvent{RecordEvent::Kind::kData};
    case kAlert:
      if (plaintext.size() == 2 && static_cast<uint8_t>(plaintext[1]) == kCloseNotify) {
        return RecordEvent{RecordEvent::Kind::kCloseNotify};
      }
      return base::make_error(
          "peer sent alert " +
          alert_name(plaintext.size() >= 2 ? static_cast<uint8_t>(plaintext[1]) : 255));
    case kHandshake:
      return parse_post_handshake(plaintext);
    default:
      return base::make_error("unexpected_message: record of type " + std::to_string(type));
  }
}

}  // namespace spiffe_tunnel::tls
