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

std::optional<uint8_t> alert_for(std::string_view error) {
  for (uint8_t alert :
       {kUnexpectedMessage, kBadRecordMac, kRecordOverflow, kDecodeError, kInternalError}) {
    const std::string name = alert_name(alert) + ":";
    if (error.substr(0, name.size()) == name) {
      return alert;
    }
  }
  return std::nullopt;
}

base::Result<RecordEvent> PostHandshakeReader::add(std::span<const char> record) {
  // RFC 8446 §5.1: handshake records are never empty (only application data may be).
  if (record.empty()) {
    return base::make_error("unexpected_message: empty handshake record");
  }
  pending_.append(record.data(), record.size());
  RecordEvent event{RecordEvent::Kind::kNothing};
  std::size_t off = 0;
  while (off < pending_.size()) {
    const auto* m = reinterpret_cast<const unsigned char*>(pending_.data() + off);
    const uint8_t type = m[0];
    const std::size_t avail = pending_.size() - off;
    std::string error;
    std::size_t len = 0;
    if (type != kNewSessionTicket && type != kKeyUpdate) {
      error = "unexpected_message: post-handshake message " + std::to_string(type);
    } else if (avail < 4) {
      break;
    } else {
      len = std::size_t{m[1]} << 16 | std::size_t{m[2]} << 8 | m[3];
      if (type == kKeyUpdate ? len != 1 : len > kMaxTicketMessage) {
        error = type == kKeyUpdate
                    ? "decode_error: malformed KeyUpdate"
                    : "decode_error: NewSessionTicket of " + std::to_string(len) + " bytes";
      } else if (avail < 4 + len) {
        break;  // the rest comes in the next handshake record
      } else if (type == kKeyUpdate) {
        // RFC 8446 §4.6.3 and §5.1: one byte, and the message before a key change ends its
        // record.
        if (m[4] > 1) {
          error = "decode_error: malformed KeyUpdate";
        } else if (avail != 5) {
          error = "unexpected_message: KeyUpdate not at the end of its record";
        } else {
          event = {RecordEvent::Kind::kKeyUpdate, m[4] == 1};
        }
      }
    }
    if (!error.empty()) {
      pending_.clear();
      return base::make_error(std::move(error));
    }
    off += 4 + len;  // a ticket is dropped: sessions are never resumed
  }
  pending_.erase(0, off);
  return event;
}

base::Result<RecordEvent> classify_record(uint8_t type, std::span<const char> plaintext,
                                          PostHandshakeReader& handshake) {
  // RFC 8446 §5.1: no other record may come between the records of a split handshake message.
  if (handshake.mid_message() && type != kHandshake) {
    return base::make_error("unexpected_message: record of type " + std::to_string(type) +
                            " inside a split handshake message");
  }
  switch (type) {
    case kApplicationData:
      return RecordEvent{RecordEvent::Kind::kData};
    case kAlert:
      if (plaintext.size() != 2) {
        return base::make_error("decode_error: alert record of " +
                                std::to_string(plaintext.size()) + " bytes");
      }
      if (static_cast<uint8_t>(plaintext[1]) == kCloseNotify) {
        return RecordEvent{RecordEvent::Kind::kCloseNotify};
      }
      return base::make_error("peer sent alert " + alert_name(static_cast<uint8_t>(plaintext[1])));
    case kHandshake:
      return handshake.add(plaintext);
    default:
      return base::make_error("unexpected_message: record of type " + std::to_string(type));
  }
}

}  // namespace spiffe_tunnel::tls
