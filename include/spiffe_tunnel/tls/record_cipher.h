#pragma once
// RecordCipher: TLS 1.3 record protection (RFC 8446 §5.2) for one direction of an established
// connection, driven by that direction's application traffic secret.
//
// OpenSSL does the handshake; afterwards a connection that the kernel does not offload runs its
// record layer here instead of in the SSL object -- the kernel TLS design, in userspace. That
// lets the stream free the SSL object (its buffers, transcript and the peer's parsed chain,
// about 17 KiB per connection), decrypt straight into the caller's buffer, and send several
// records with one syscall. Only AEAD record protection lives here; nothing of the handshake.

#include <openssl/evp.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/tls/records.h"

namespace spiffe_tunnel::tls {

// HKDF-Expand-Label(secret, label, "", length) from RFC 8446 §7.1; `digest` is "SHA256" or
// "SHA384".
base::Status hkdf_expand_label(const char* digest, std::span<const unsigned char> secret,
                               std::string_view label, unsigned char* out, std::size_t length);

class RecordCipher {
 public:
  enum class Direction { kSeal, kOpen };
  struct Suite;  // one TLS 1.3 cipher suite's AEAD, hash and key size

  // `suite` is the standard TLS 1.3 name (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
  // TLS_CHACHA20_POLY1305_SHA256); `secret` the direction's application traffic secret 0. The
  // sequence number starts at `first_seq` (records OpenSSL already protected with that secret).
  static base::Result<std::unique_ptr<RecordCipher>> create(std::string_view suite,
                                                            std::span<const unsigned char> secret,
                                                            Direction direction,
                                                            uint64_t first_seq = 0);
  ~RecordCipher();
  RecordCipher(const RecordCipher&) = delete;
  RecordCipher& operator=(const RecordCipher&) = delete;

  // Writes one protected record carrying `data` (at most kMaxPlaintext bytes) with inner content
  // type `type` to `out`, which must hold data.size() + kRecordOverhead bytes. Returns the record
  // size.
  base::Result<std::size_t> seal(uint8_t type, std::span<const char> data, char* out);

  struct Opened {
    uint8_t type = 0;
    std::size_t size = 0;  // plaintext bytes at the start of `out`
  };
  // Authenticates and decrypts one record (`record` = header + ciphertext, as on the wire) into
  // `out`, which must hold record.size() - kRecordHeader - kAeadTag bytes and may be the
  // ciphertext itself (record.data() + kRecordHeader). The error names the TLS alert the record
  // deserves (bad_record_mac, record_overflow, unexpected_message, decode_error). A failure is
  // latched: every later call fails with the same error.
  base::Result<Opened> open(std::span<const char> record, char* out);

  // Moves to the next traffic secret (a KeyUpdate, RFC 8446 §7.2) and restarts the sequence.
  base::Status next_generation();

  uint64_t sequence() const { return seq_; }
  std::size_t generation() const { return generation_; }

 private:
  RecordCipher(const Suite& suite, Direction direction);
  base::Status install(std::span<const unsigned char> secret);
  void nonce(unsigned char out[12]) const;
  base::Result<Opened> open_once(std::span<const char> record, char* out);

  const Suite& suite_;
  const Direction direction_;
  EVP_CIPHER_CTX* ctx_ = nullptr;
  unsigned char secret_[48] = {};
  unsigned char iv_[12] = {};
  uint64_t seq_ = 0;
  std::size_t generation_ = 0;
  std::string failure_;  // the first open() error; "" while none
};

}  // namespace spiffe_tunnel::tls
