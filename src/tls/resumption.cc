#include "spiffe_tunnel/tls/resumption.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>

#include "spiffe_tunnel/tls/tls_context.h"

namespace spiffe_tunnel::tls {
namespace {

constexpr unsigned char kFactsVersion = 1;
constexpr std::size_t kMaxChain = 16;

void put_u16(std::string& out, std::size_t v) {
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

void put_bytes(std::string& out, std::string_view bytes) {
  put_u16(out, bytes.size());
  out.append(bytes);
}

// Reads big-endian fields off the front of `in`; every read fails once one has.
struct Reader {
  std::string_view in;
  bool ok = true;

  uint64_t number(std::size_t bytes) {
    if (!ok || in.size() < bytes) {
      ok = false;
      return 0;
    }
    uint64_t v = 0;
    for (std::size_t i = 0; i < bytes; ++i) {
      v = v << 8 | static_cast<unsigned char>(in[i]);
    }
    in.remove_prefix(bytes);
    return v;
  }
  std::string bytes() {
    const std::size_t n = number(2);
    if (!ok || in.size() < n) {
      ok = false;
      return {};
    }
    std::string out(in.substr(0, n));
    in.remove_prefix(n);
    return out;
  }
};

}  // namespace

std::string encode_ticket_facts(const TicketFacts& facts) {
  std::string out;
  out.push_back(static_cast<char>(kFactsVersion));
  const auto secs =
      std::chrono::duration_cast<std::chrono::seconds>(facts.expires.time_since_epoch()).count();
  const auto expires = static_cast<uint64_t>(std::max<int64_t>(secs, 0));
  for (int i = 7; i >= 0; --i) {
    out.push_back(static_cast<char>((expires >> (8 * i)) & 0xff));
  }
  put_bytes(out, facts.peer_id);
  out.push_back(static_cast<char>(facts.chain_der.size()));
  for (const std::string& der : facts.chain_der) {
    put_bytes(out, der);
  }
  return out;
}

std::optional<TicketFacts> decode_ticket_facts(std::string_view data) {
  Reader r{data};
  if (r.number(1) != kFactsVersion) {
    return std::nullopt;
  }
  TicketFacts facts;
  facts.expires = std::chrono::system_clock::time_point(
      std::chrono::seconds(static_cast<int64_t>(r.number(8) & 0x7fffffffffffffff)));
  facts.peer_id = r.bytes();
  const std::size_t count = r.number(1);
  if (!r.ok || count == 0 || count > kMaxChain || facts.peer_id.empty()) {
    return std::nullopt;
  }
  for (std::size_t i = 0; i < count && r.ok; ++i) {
    facts.chain_der.push_back(r.bytes());
  }
  if (!r.ok || !r.in.empty()) {
    return std::nullopt;
  }
  return facts;
}

TicketKeys::TicketKeys(std::chrono::milliseconds rotation) : rotation_(rotation) {
  std::lock_guard lock(mutex_);
  usable_ = fresh(current_);
}

TicketKeys::~TicketKeys() {
  OPENSSL_cleanse(&current_, sizeof(current_));
  if (previous_) {
    OPENSSL_cleanse(&*previous_, sizeof(*previous_));
  }
}

bool TicketKeys::fresh(Key& key) {
  key.created = std::chrono::steady_clock::now();
  return RAND_bytes(key.name.data(), static_cast<int>(key.name.size())) == 1 &&
         RAND_priv_bytes(key.aes.data(), static_cast<int>(key.aes.size())) == 1 &&
         RAND_priv_bytes(key.hmac.data(), static_cast<int>(key.hmac.size())) == 1;
}

bool TicketKeys::apply(const Key& key, const unsigned char* iv, EVP_CIPHER_CTX* cipher,
                       EVP_MAC_CTX* mac, int enc) {
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(key.hmac.data()),
                                        key.hmac.size()),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  if (EVP_MAC_CTX_set_params(mac, params) != 1) {
    return false;
  }
  return enc != 0 ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes.data(), iv) == 1
                  : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, key.aes.data(), iv) == 1;
}

void TicketKeys::rotate_if_due() {
  if (std::chrono::steady_clock::now() - current_.created < rotation_) {
    return;
  }
  Key next;
  if (!fresh(next)) {
    return;  // keep the current key; RAND failing is reported by the next fresh() user
  }
  if (previous_) {
    OPENSSL_cleanse(&*previous_, sizeof(*previous_));
  }
  previous_ = current_;
  current_ = next;
  OPENSSL_cleanse(&next, sizeof(next));
  usable_ = true;
}

int TicketKeys::use(unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                    EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int enc) {
  std::lock_guard lock(mutex_);
  rotate_if_due();
  if (enc != 0) {
    if (!usable_ || RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1) {
      return -1;  // no ticket rather than one under a weak key
    }
    std::memcpy(name, current_.name.data(), current_.name.size());
    return apply(current_, iv, cipher, mac, 1) ? 1 : -1;
  }
  if (usable_ && CRYPTO_memcmp(name, current_.name.data(), current_.name.size()) == 0) {
    return apply(current_, iv, cipher, mac, 0) ? 1 : 0;
  }
  if (previous_ && CRYPTO_memcmp(name, previous_->name.data(), previous_->name.size()) == 0) {
    return apply(*previous_, iv, cipher, mac, 0) ? 2 : 0;
  }
  return 0;
}

void SessionCache::put(const std::string& endpoint, SSL_SESSION* session,
                       std::shared_ptr<const PeerOutcome> peer,
                       std::chrono::system_clock::time_point expires) {
  std::shared_ptr<SSL_SESSION> held(session, SSL_SESSION_free);
  std::lock_guard lock(mutex_);
  if (entries_.size() >= kMaxEntries && entries_.find(endpoint) == entries_.end()) {
    auto oldest = std::min_element(entries_.begin(), entries_.end(), [](auto& a, auto& b) {
      return a.second.expires < b.second.expires;
    });
    entries_.erase(oldest);
  }
  entries_[endpoint] = Entry{std::move(held), std::move(peer), expires};
  silent_.erase(endpoint);
}

std::optional<SessionCache::Entry> SessionCache::find(const std::string& endpoint,
                                                      std::chrono::system_clock::time_point now,
                                                      bool& expired) {
  expired = false;
  std::lock_guard lock(mutex_);
  auto it = entries_.find(endpoint);
  if (it == entries_.end()) {
    return std::nullopt;
  }
  if (it->second.expires <= now) {
    entries_.erase(it);
    expired = true;
    return std::nullopt;
  }
  return it->second;
}

void SessionCache::forget(const std::string& endpoint) {
  std::lock_guard lock(mutex_);
  entries_.erase(endpoint);
}

void SessionCache::mark_silent(const std::string& endpoint,
                               std::chrono::steady_clock::time_point until) {
  std::lock_guard lock(mutex_);
  if (silent_.size() >= kMaxEntries) {
    silent_.clear();
  }
  silent_[endpoint] = until;
}

bool SessionCache::silent(const std::string& endpoint,
                          std::chrono::steady_clock::time_point now) const {
  std::lock_guard lock(mutex_);
  auto it = silent_.find(endpoint);
  return it != silent_.end() && it->second > now;
}

}  // namespace spiffe_tunnel::tls
