#pragma once
// TLS record-layer facts shared by every record layer that runs after the handshake (the own
// TLS 1.3 record layer and the kernel one): content types, handshake message types, alerts,
// record sizes, and what a plaintext record of each type means for its reader. Pure functions on
// bytes; no I/O, any thread.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "spiffe_tunnel/base/result.h"

namespace spiffe_tunnel::tls {

// TLS record content types (RFC 8446 §5.1).
inline constexpr uint8_t kAlert = 21;
inline constexpr uint8_t kHandshake = 22;
inline constexpr uint8_t kApplicationData = 23;

// Handshake messages that may follow the handshake (RFC 8446 §4.6).
inline constexpr uint8_t kNewSessionTicket = 4;
inline constexpr uint8_t kKeyUpdate = 24;

// Alert levels and the description of the alert that ends a direction cleanly (RFC 8446 §6).
inline constexpr uint8_t kAlertWarning = 1;
inline constexpr uint8_t kAlertFatal = 2;
inline constexpr uint8_t kCloseNotify = 0;
// The body of a close_notify alert record.
inline constexpr char kCloseNotifyAlert[] = {kAlertWarning, kCloseNotify};
// The fatal alerts the record layer itself sends (RFC 8446 §6.2).
inline constexpr uint8_t kUnexpectedMessage = 10;
inline constexpr uint8_t kBadRecordMac = 20;
inline constexpr uint8_t kRecordOverflow = 22;
inline constexpr uint8_t kDecodeError = 50;
inline constexpr uint8_t kInternalError = 80;

inline constexpr std::size_t kRecordHeader = 5;
inline constexpr std::size_t kMaxPlaintext = 16384;         // 2^14
inline constexpr std::size_t kMaxCiphertext = 16384 + 256;  // 2^14 + 256 (RFC 8446 §5.2)
// TLSInnerPlaintext: content, content type and padding together (RFC 8446 §5.4).
inline constexpr std::size_t kMaxInnerPlaintext = kMaxPlaintext + 1;
// The largest NewSessionTicket body: lifetime, age_add, nonce<0..255>, ticket<1..2^16-1>,
// extensions<0..2^16-2> (RFC 8446 §4.6.1).
inline constexpr std::size_t kMaxTicketMessage = 4 + 4 + 1 + 255 + 2 + 65535 + 2 + 65534;
inline constexpr std::size_t kAeadTag = 16;
// Bytes a TLS 1.3 record adds to its plaintext: header, inner content type, tag.
inline constexpr std::size_t kRecordOverhead = kRecordHeader + 1 + kAeadTag;

// A readable description of a TLS alert ("close_notify", "bad_record_mac", ...).
std::string alert_name(uint8_t description);

// The alert a record-layer error deserves, read from its leading name ("bad_record_mac: ...",
// "record_overflow: ...", "unexpected_message: ...", "decode_error: ...", "internal_error: ...");
// nullopt for errors that get no alert (the peer's own alert, a closed or failed socket).
std::optional<uint8_t> alert_for(std::string_view error);

// What one plaintext record asks of the reader that received it.
struct RecordEvent {
  enum class Kind {
    kData,         // application data for the caller
    kCloseNotify,  // the peer's clean end of its direction
    kNothing,      // post-handshake messages that need no action (NewSessionTicket, dropped)
    kKeyUpdate,    // the peer moved to its next traffic secret; the reader must follow
  };
  Kind kind = Kind::kData;
  bool update_requested = false;  // kKeyUpdate: the peer asks for our KeyUpdate in return
};

// Reassembles the handshake messages that may follow the handshake from the handshake records
// of one direction: a message may be split across records, and a record may hold several
// messages (RFC 8446 §5.1). A NewSessionTicket is dropped (sessions are never resumed); a
// KeyUpdate must be well formed and end its record, the last bytes under the old key. Errors name
// the alert the record deserves. One per direction; not thread-safe.
class PostHandshakeReader {
 public:
  // Takes the plaintext of one handshake record. kNothing when it ended with (or within) tickets,
  // kKeyUpdate when it ended with a KeyUpdate. Fails on an empty record, another message type, a
  // malformed KeyUpdate, a KeyUpdate not at the end of its record, or a ticket over
  // kMaxTicketMessage bytes.
  base::Result<RecordEvent> add(std::span<const char> record);
  // Part of a message has arrived: nothing but handshake records may follow until it is whole.
  bool mid_message() const { return !pending_.empty(); }

 private:
  std::string pending_;  // received bytes of the message(s) not yet whole
};

// Classifies one plaintext record of content type `type`: data, the peer's close_notify, or
// post-handshake messages (given to `handshake`). Any other alert fails with "peer sent alert
// <name>", a malformed alert with decode_error, another type (or any record other than handshake
// while a handshake message is incomplete) with unexpected_message.
base::Result<RecordEvent> classify_record(uint8_t type, std::span<const char> plaintext,
                                          PostHandshakeReader& handshake);

}  // namespace spiffe_tunnel::tls
