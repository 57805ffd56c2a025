#pragma once
// TLS record-layer facts shared by every record layer that runs after the handshake (the own
// TLS 1.3 record layer and the kernel one): content types, handshake message types, alerts,
// record sizes, and what a plaintext record of each type means for its reader. Pure functions on
// bytes; no I/O, any thread.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

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

inline constexpr std::size_t kRecordHeader = 5;
inline constexpr std::size_t kMaxPlaintext = 16384;         // 2^14
inline constexpr std::size_t kMaxCiphertext = 16384 + 256;  // 2^14 + 256 (RFC 8446 §5.2)
inline constexpr std::size_t kAeadTag = 16;
// Bytes a TLS 1.3 record adds to its plaintext: header, inner content type, tag.
inline constexpr std::size_t kRecordOverhead = kRecordHeader + 1 + kAeadTag;

// A readable description of a TLS alert ("close_notify", "bad_record_mac", ...).
std::string alert_name(uint8_t description);

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

// Parses the handshake messages of one decrypted handshake record. A NewSessionTicket is dropped
// (sessions are never resumed); a KeyUpdate must be well formed and the last message of its
// record (RFC 8446 §4.6.3). Fails, naming the alert the record deserves, on a truncated or
// malformed message, one split across records, or any other message type.
base::Result<RecordEvent> parse_post_handshake(std::span<const char> record);

// Classifies one plaintext record of content type `type`: data, the peer's close_notify, or
// post-handshake messages (parse_post_handshake). Any other alert fails with "peer sent alert
// <name>", any other type with "unexpected_message: record of type <n>".
base::Result<RecordEvent> classify_record(uint8_t type, std::span<const char> plaintext);

}  // namespace spiffe_tunnel::tls
