#include "spiffe_tunnel/tls/record_cipher.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cstring>
#include <vector>

namespace spiffe_tunnel::tls {

struct RecordCipher::Suite {
  std::string_view name;
  const char* digest;
  std::size_t hash_size;
  const char* aead;
  std::size_t key_size;
};

namespace {

constexpr RecordCipher::Suite kSuites[] = {
    {"TLS_AES_128_GCM_SHA256", "SHA256", 32, "AES-128-GCM", 16},
    {"TLS_AES_256_GCM_SHA384", "SHA384", 48, "AES-256-GCM", 32},
    {"TLS_CHACHA20_POLY1305_SHA256", "SHA256", 32, "ChaCha20-Poly1305", 32},
};

// Algorithms are fetched once per process: an OpenSSL 3 fetch walks the provider's method store,
// which is far more than the per-connection work it would be repeated for.
EVP_KDF* hkdf() {
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  return kdf;
}

EVP_CIPHER* aead(std::size_t index) {
  static EVP_CIPHER* const ciphers[] = {
      EVP_CIPHER_fetch(nullptr, kSuites[0].aead, nullptr),
      EVP_CIPHER_fetch(nullptr, kSuites[1].aead, nullptr),
      EVP_CIPHER_fetch(nullptr, kSuites[2].aead, nullptr),
  };
  return ciphers[index];
}

}  // namespace

base::Status hkdf_expand_label(const char* digest, std::span<const unsigned char> secret,
                               std::string_view label, unsigned char* out, std::size_t length) {
  // HkdfLabel: uint16 length, opaque label<7..255> = "tls13 " + label, opaque context<0..255>.
  unsigned char info[2 + 1 + 255 + 1];
  const std::size_t label_size = 6 + label.size();
  if (label_size > 255) {
    return base::make_error("HKDF label too long");
  }
  info[0] = static_cast<unsigned char>(length >> 8);
  info[1] = static_cast<unsigned char>(length & 0xff);
  info[2] = static_cast<unsigned char>(label_size);
  std::memcpy(info + 3, "tls13 ", 6);
  std::memcpy(info + 9, label.data(), label.size());
  info[3 + label_size] = 0;  // empty context
  const std::size_t info_size = 4 + label_size;

  if (hkdf() == nullptr) {
    return base::make_error("HKDF is not available in this OpenSSL");
  }
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(hkdf());
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                        const_cast<unsigned char*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, info_size),
      OSSL_PARAM_construct_end()};
  const bool ok = ctx != nullptr && EVP_KDF_derive(ctx, out, length, params) == 1;
  EVP_KDF_CTX_free(ctx);
  if (!ok) {
    return base::make_error("HKDF-Expand-Label(" + std::string(label) + ") failed");
  }
  return {};
}

RecordCipher::RecordCipher(const Suite& suite, Direction direction)
    : suite_(suite), direction_(direction) {}

RecordCipher::~RecordCipher() {
  EVP_CIPHER_CTX_free(ctx_);
  OPENSSL_cleanse(secret_, sizeof(secret_));
  OPENSSL_cleanse(iv_, sizeof(iv_));
}

base::Result<std::unique_ptr<RecordCipher>> RecordCipher::create(
    std::string_view suite, std::span<const unsigned char> secret, Direction direction,
    uint64_t first_seq) {
  for (std::size_t i = 0; i < std::size(kSuites); ++i) {
    if (kSuites[i].name != suite) {
      continue;
    }
    if (secret.size() != kSuites[i].hash_size) {
      return base::make_error("traffic secret for " + std::string(suite) + " has " +
                              std::to_string(secret.size()) + " bytes, expected " +
                              std::to_string(kSuites[i].hash_size));
    }
    if (aead(i) == nullptr) {
      return base::make_error(std::string(kSuites[i].aead) + " is not available in this OpenSSL");
    }
    std::unique_ptr<RecordCipher> c(new RecordCipher(kSuites[i], direction));
    c->ctx_ = EVP_CIPHER_CTX_new();
    if (c->ctx_ == nullptr ||
        EVP_CipherInit_ex(c->ctx_, aead(i), nullptr, nullptr, nullptr,
                          direction == Direction::kSeal ? 1 : 0) != 1) {
      return base::make_error(std::string("cannot set up ") + kSuites[i].aead);
    }
    if (auto st = c->install(secret); !st) {
      return st.error();
    }
    c->seq_ = first_seq;
    return c;
  }
  return base::make_error("cipher suite " + std::string(suite) +
                          " has no userspace TLS 1.3 record layer");
}

base::Status RecordCipher::install(std::span<const unsigned char> secret) {
  if (secret.data() != secret_) {
    std::memcpy(secret_, secret.data(), suite_.hash_size);
  }
  unsigned char key[32];
  auto st = hkdf_expand_label(suite_.digest, {secret_, suite_.hash_size}, "key", key,
                              suite_.key_size);
  if (st) {
    st = hkdf_expand_label(suite_.digest, {secret_, suite_.hash_size}, "iv", iv_, sizeof(iv_));
  }
  if (st && EVP_CipherInit_ex(ctx_, nullptr, nullptr, key, nullptr, -1) != 1) {
    st = base::make_error(std::string("cannot key ") + suite_.aead);
  }
  OPENSSL_cleanse(key, sizeof(key));
  seq_ = 0;
  return st;
}

base::Status RecordCipher::next_generation() {
  unsigned char next[48];
  auto st = hkdf_expand_label(suite_.digest, {secret_, suite_.hash_size}, "traffic upd", next,
                              suite_.hash_size);
  if (st) {
    std::memcpy(secret_, next, suite_.hash_size);
    st = install({secret_, suite_.hash_size});
    ++generation_;
  }
  OPENSSL_cleanse(next, sizeof(next));
  return st;
}

// The per-record nonce: the sequence number, left-padded to 12 bytes, XORed with the IV.
void RecordCipher::nonce(unsigned char out[12]) const {
  std::memcpy(out, iv_, 12);
  for (int i = 0; i < 8; ++i) {
    out[11 - i] ^= static_cast<unsigned char>(seq_ >> (8 * i));
  }
}

base::Result<std::size_t> RecordCipher::seal(uint8_t type, std::span<const char> data, char* out) {
  if (direction_ != Direction::kSeal || data.size() > kMaxPlaintext) {
    return base::make_error("internal_error: record too large or wrong direction");
  }
  if (seq_ == UINT64_MAX) {
    return base::make_error("record sequence number exhausted");
  }
  const std::size_t body = data.size() + 1 + kAeadTag;
  auto* o = reinterpret_cast<unsigned char*>(out);
  o[0] = kApplicationData;  // the outer type of every protected record
  o[1] = 0x03;
  o[2] = 0x03;
  o[3] = static_cast<unsigned char>(body >> 8);
  o[4] = static_cast<unsigned char>(body & 0xff);
  unsigned char n[12];
  nonce(n);
  int len = 0;
  bool ok = EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, n) == 1 &&
            EVP_EncryptUpdate(ctx_, nullptr, &len, o, kRecordHeader) == 1;
  if (ok && !data.empty()) {
    ok = EVP_EncryptUpdate(ctx_, o + kRecordHeader, &len,
                           reinterpret_cast<const unsigned char*>(data.data()),
                           static_cast<int>(data.size())) == 1;
  }
  ok = ok &&
       EVP_EncryptUpdate(ctx_, o + kRecordHeader + data.size(), &len, &type, 1) == 1 &&
       EVP_EncryptFinal_ex(ctx_, o + kRecordHeader + data.size() + 1, &len) == 1 &&
       EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_GET_TAG, kAeadTag,
                           o + kRecordHeader + data.size() + 1) == 1;
  if (!ok) {
    return base::make_error("internal_error: record encryption failed");
  }
  ++seq_;
  return kRecordHeader + body;
}

base::Result<RecordCipher::Opened> RecordCipher::open(std::span<const char> record, char* out) {
  // A failure is final (RFC 8446 §5.2: the connection is terminated): no later record is opened,
  // however well it authenticates, so nothing after a forgery can reach the reader.
  if (!failure_.empty()) {
    return base::make_error(failure_);
  }
  auto opened = open_once(record, out);
  if (!opened) {
    failure_ = opened.error().message;
  }
  return opened;
}

base::Result<RecordCipher::Opened> RecordCipher::open_once(std::span<const char> record,
                                                           char* out) {
  if (direction_ != Direction::kOpen || record.size() < kRecordHeader) {
    return base::make_error("internal_error: short record or wrong direction");
  }
  const auto* r = reinterpret_cast<const unsigned char*>(record.data());
  const std::size_t body = record.size() - kRecordHeader;
  if (r[0] != kApplicationData) {
    return base::make_error("unexpected_message: unprotected record of type " +
                            std::to_string(r[0]) + " after the handshake");
  }
  if (body > kMaxCiphertext) {
    return base::make_error("record_overflow: record of " + std::to_string(body) + " bytes");
  }
  if (body < 1 + kAeadTag) {
    return base::make_error("decode_error: record of " + std::to_string(body) +
                            " bytes is shorter than its tag");
  }
  if (seq_ == UINT64_MAX) {
    return base::make_error("record sequence number exhausted");
  }
  const std::size_t ct = body - kAeadTag;
  auto* o = reinterpret_cast<unsigned char*>(out);
  unsigned char n[12];
  nonce(n);
  int len = 0;
  const bool ok =
      EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, n) == 1 &&
      EVP_DecryptUpdate(ctx_, nullptr, &len, r, kRecordHeader) == 1 &&
      EVP_DecryptUpdate(ctx_, o, &len, r + kRecordHeader, static_cast<int>(ct)) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_SET_TAG, kAeadTag,
                          const_cast<unsigned char*>(r + kRecordHeader + ct)) == 1 &&
      EVP_DecryptFinal_ex(ctx_, o + ct, &len) == 1;
  if (!ok) {
    return base::make_error("bad_record_mac: record authentication failed");
  }
  ++seq_;
  // RFC 8446 §5.4: the whole TLSInnerPlaintext (content, type, padding) is at most 2^14 + 1.
  if (ct > kMaxInnerPlaintext) {
    return base::make_error("record_overflow: inner plaintext of " + std::to_string(ct) +
                            " bytes");
  }
  // TLSInnerPlaintext: content, then the real content type, then zero padding.
  std::size_t end = ct;
  while (end > 0 && o[end - 1] == 0) {
    --end;
  }
  if (end == 0) {
    return base::make_error("unexpected_message: record without a content type");
  }
  const std::size_t size = end - 1;
  return Opened{o[size], size};
}

}  // namespace spiffe_tunnel::tls
