// Fuzzes the decrypt path of the own TLS 1.3 record layer: RecordCipher::open, then
// classify_record with one PostHandshakeReader, as the userspace record stream runs them, under
// fixed test traffic secrets. Arbitrary ciphertext never authenticates, so the input is a script
// of operations against a sealing/opening pair sharing the secrets:
//
//   0 raw:    u16 length, bytes   -- one record as received from the wire (header included)
//   1 sealed: type, u16 length, bytes -- a record the peer protected with inner type `type`
//   2 inner:  u16 length, bytes   -- a record whose whole TLSInnerPlaintext is `bytes` (content,
//                                    type, padding: sealed with inner type 0)
//   3 tamper: u16 offset, type, u16 length, bytes -- a sealed record with one bit flipped
//
// The first byte picks the suite. A KeyUpdate the reader accepts moves both sides to the next
// secret, as the stream does. Checked: a record sealed by the peer opens to exactly what was
// sealed; a tampered or forged record never opens; after any failure every later open fails
// (the failure is latched); an error always names its alert.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "spiffe_tunnel/tls/record_cipher.h"
#include "spiffe_tunnel/tls/records.h"

using namespace spiffe_tunnel::tls;

namespace {

struct Input {
  const uint8_t* p;
  size_t n;
  bool take(size_t k, const uint8_t** out) {
    if (n < k) return false;
    *out = p;
    p += k;
    n -= k;
    return true;
  }
  bool u8(uint8_t* v) {
    const uint8_t* b;
    if (!take(1, &b)) return false;
    *v = b[0];
    return true;
  }
  bool u16(size_t* v) {
    const uint8_t* b;
    if (!take(2, &b)) return false;
    *v = (size_t{b[0]} << 8) | b[1];
    return true;
  }
  // A length-prefixed blob, cut to what is left.
  std::span<const char> blob(size_t max) {
    size_t len = 0;
    if (!u16(&len)) return {};
    len = std::min({len, n, max});
    const uint8_t* b = nullptr;
    take(len, &b);
    return {reinterpret_cast<const char*>(b), len};
  }
};

constexpr const char* kSuites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"};

void require(bool ok) {
  if (!ok) std::abort();
}

// Every record-layer error either names its alert or is the peer's own alert.
void check_error(const std::string& message) {
  require(alert_for(message).has_value() || message.rfind("peer sent alert", 0) == 0);
}

class Session {
 public:
  explicit Session(uint8_t suite_byte) {
    const char* suite = kSuites[suite_byte % 3];
    const size_t secret_len = (suite_byte % 3 == 1) ? 48 : 32;
    std::vector<unsigned char> secret(secret_len, 0x5a);
    auto s = RecordCipher::create(suite, secret, RecordCipher::Direction::kSeal);
    auto o = RecordCipher::create(suite, secret, RecordCipher::Direction::kOpen);
    require(s.ok() && o.ok());
    seal_ = std::move(*s);
    open_ = std::move(*o);
  }

  bool failed() const { return failed_; }

  // Opens `record` (in place, as the stream does) and hands its plaintext to the reader.
  void receive(std::span<const char> record, const std::string* expect, uint8_t expect_type) {
    buf_.assign(record.data(), record.size());
    char* out = buf_.data() + std::min(buf_.size(), kRecordHeader);
    auto opened = open_->open({buf_.data(), buf_.size()}, out);
    if (!opened.ok()) {
      require(expect == nullptr);
      check_error(opened.error().message);
      fail(true);
      return;
    }
    std::span<const char> plain(buf_.data() + kRecordHeader, opened->size);
    if (expect != nullptr) {
      require(opened->type == expect_type && plain.size() == expect->size() &&
              std::memcmp(plain.data(), expect->data(), plain.size()) == 0);
    }
    auto event = classify_record(opened->type, plain, reader_);
    if (!event.ok()) {
      check_error(event.error().message);
      fail(false);  // the stream latches this one; the cipher has nothing to latch
      return;
    }
    if (event->kind == RecordEvent::Kind::kKeyUpdate) {
      require(open_->next_generation().ok() && seal_->next_generation().ok());
    }
  }

  std::string seal(uint8_t type, std::span<const char> data) {
    std::string out(data.size() + kRecordOverhead, '\0');
    auto n = seal_->seal(type, data, out.data());
    require(n.ok() && *n == out.size());
    return out;
  }

 private:
  void fail(bool cipher_failed) {
    failed_ = true;
    if (!cipher_failed) return;
    // Latched: a record the peer sealed correctly does not open after a failed open.
    const std::string probe = seal(kApplicationData, std::span<const char>("x", 1));
    buf_ = probe;
    require(!open_->open({buf_.data(), buf_.size()}, buf_.data() + kRecordHeader).ok());
  }

  std::unique_ptr<RecordCipher> seal_;
  std::unique_ptr<RecordCipher> open_;
  PostHandshakeReader reader_;
  std::string buf_;  // data() is never null, even for an empty record
  bool failed_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  uint8_t suite = 0;
  if (!in.u8(&suite)) return 0;
  Session session(suite);
  uint8_t op = 0;
  while (!session.failed() && in.u8(&op)) {
    switch (op % 4) {
      case 0:
        session.receive(in.blob(kRecordHeader + kMaxCiphertext + 64), nullptr, 0);
        break;
      case 1: {
        uint8_t type = 0;
        if (!in.u8(&type)) return 0;
        const auto body = in.blob(kMaxPlaintext);
        const std::string expect(body.begin(), body.end());
        if (type == 0) {
          session.receive(session.seal(type, body), nullptr, 0);
        } else {
          session.receive(session.seal(type, body), &expect, type);
        }
        break;
      }
      case 2:
        session.receive(session.seal(0, in.blob(kMaxPlaintext)), nullptr, 0);
        break;
      default: {
        size_t offset = 0;
        uint8_t type = 0;
        if (!in.u16(&offset) || !in.u8(&type)) return 0;
        std::string record = session.seal(type, in.blob(kMaxPlaintext));
        record[offset % record.size()] ^= static_cast<char>(1u << (type % 8));
        session.receive(record, nullptr, 0);
        require(session.failed());
        break;
      }
    }
  }
  return 0;
}
