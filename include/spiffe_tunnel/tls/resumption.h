#pragma once
// TLS 1.3 session resumption between tunnels without weakening verification
// (docs/security.md, "Session resumption").
//
// Only TLS 1.3 PSK with (EC)DHE (OpenSSL refuses psk_ke unless SSL_OP_ALLOW_NO_DHE_KEX, which is
// never set). A server issues tickets only after it verified and authorized the client in full,
// and seals into each ticket what it concluded (TicketFacts): the peer's SPIFFE ID, its chain as
// verified, and when the ticket stops being accepted -- min(session_ticket_lifetime, the chain's
// notAfter). The ticket keys (TicketKeys) belong to one TlsContext, which is built for one
// identity snapshot: a new SVID or any bundle change means a new context, whose keys decrypt no
// earlier ticket. At each resumption the stored ID is authorized again against the tunnel's
// rules; OPA, when configured, is asked by the session as for every connection.
//
// A client keeps the newest ticket per remote endpoint (SessionCache) in the same per-snapshot
// context, with the server's outcome from the full handshake, and offers it only while it has
// not expired and its own rules still accept the server's ID.

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace spiffe_tunnel::tls {

// Why a ticket was not used; labels of spiffe_tunnel_resumptions_refused_total.
inline constexpr std::string_view kRefusedUnknownKey = "unknown_key";
inline constexpr std::string_view kRefusedExpired = "expired";
inline constexpr std::string_view kRefusedNotAuthorized = "not_authorized";
inline constexpr std::string_view kRefusedNotTls13 = "not_tls13";
inline constexpr std::string_view kRefusedDeclined = "declined";  // client: server chose full

// What a server seals into a ticket about the peer it was issued to.
struct TicketFacts {
  std::chrono::system_clock::time_point expires;
  std::string peer_id;
  std::vector<std::string> chain_der;  // leaf first, as VerifiedChain keeps it
};

// A versioned binary form (the ticket's app data, encrypted and authenticated with the ticket).
std::string encode_ticket_facts(const TicketFacts& facts);
// Rejects anything malformed or of another version (nullopt).
std::optional<TicketFacts> decode_ticket_facts(std::string_view data);

// The ticket encryption keys of one server context: AES-256-CBC + HMAC-SHA256, as OpenSSL's own
// ticket format uses them, in a ring of the current key and the previous one. The current key
// seals new tickets for `rotation`, then becomes the previous one; a ticket under the previous
// key is still accepted (and replaced), older ones are not. Keys come from RAND_priv_bytes and
// live only in memory. Thread-safe.
class TicketKeys {
 public:
  explicit TicketKeys(std::chrono::milliseconds rotation);
  ~TicketKeys();
  TicketKeys(const TicketKeys&) = delete;
  TicketKeys& operator=(const TicketKeys&) = delete;

  // SSL_CTX_set_tlsext_ticket_key_evp_cb semantics: with `enc` 1 names and sets up the current
  // key and a fresh IV (returns 1, or -1 on failure); with 0 finds the key by `name` (returns 1
  // for the current key, 2 for the previous one, 0 for an unknown one).
  int use(unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH], EVP_CIPHER_CTX* cipher,
          EVP_MAC_CTX* mac, int enc);

 private:
  struct Key {
    std::array<unsigned char, 16> name{};
    std::array<unsigned char, 32> aes{};
    std::array<unsigned char, 32> hmac{};
    std::chrono::steady_clock::time_point created;
  };
  static bool fresh(Key& key);
  static bool apply(const Key& key, const unsigned char* iv, EVP_CIPHER_CTX* cipher,
                    EVP_MAC_CTX* mac, int enc);
  void rotate_if_due();  // mutex_ held

  const std::chrono::milliseconds rotation_;
  std::mutex mutex_;
  Key current_;                 // guarded by mutex_
  std::optional<Key> previous_;  // guarded by mutex_
  bool usable_ = false;         // guarded by mutex_: RAND produced the current key
};

struct PeerOutcome;

// Client: the newest ticket per remote endpoint. Thread-safe; bounded (the oldest entry goes
// when full).
class SessionCache {
 public:
  struct Entry {
    std::shared_ptr<SSL_SESSION> session;
    std::shared_ptr<const PeerOutcome> peer;  // the server as the full handshake verified it
    std::chrono::system_clock::time_point expires;
  };

  // Keeps `session` (takes over the caller's reference).
  void put(const std::string& endpoint, SSL_SESSION* session,
           std::shared_ptr<const PeerOutcome> peer, std::chrono::system_clock::time_point expires);
  // The entry for `endpoint` when it has not expired at `now`; an expired one is dropped and
  // `expired` set.
  std::optional<Entry> find(const std::string& endpoint, std::chrono::system_clock::time_point now,
                            bool& expired);
  void forget(const std::string& endpoint);

  // An endpoint that sent no ticket after a full handshake is not waited for again until
  // `until` (a server with resumption off).
  void mark_silent(const std::string& endpoint, std::chrono::steady_clock::time_point until);
  bool silent(const std::string& endpoint, std::chrono::steady_clock::time_point now) const;

  static constexpr std::size_t kMaxEntries = 1024;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;  // guarded by mutex_
  std::unordered_map<std::string, std::chrono::steady_clock::time_point> silent_;  // guarded
};

}  // namespace spiffe_tunnel::tls
