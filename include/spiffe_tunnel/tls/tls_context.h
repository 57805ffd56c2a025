#pragma once
// The TLS side of one tunnel: which SVID it presents, how it verifies and authorizes peers, and
// which protocol versions, ciphers and kernel offload it allows.
//
// ContextProvider builds one SSL_CTX per identity snapshot and caches it; when the identity store
// publishes a new snapshot the next handshake gets a new context, while established sessions keep
// the SSL objects (and so the context) they started with. Peer verification is SPIFFE's, not
// OpenSSL's: the verify callback picks the bundle of the peer's own trust domain from the same
// snapshot, then asks the tunnel's Authorizer. Session resumption is off unless the tunnel enables
// it (resumption.h), and then bound to the context's snapshot. Any thread may call
// ContextProvider::current().

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "spiffe_tunnel/base/clock.h"
#include "spiffe_tunnel/base/openssl.h"
#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/policy/authorizer.h"
#include "spiffe_tunnel/spiffe/peer_verifier.h"
#include "spiffe_tunnel/tls/resumption.h"
#include "spiffe_tunnel/tls/verified_chain.h"

namespace spiffe_tunnel::tls {

enum class Role { kServer, kClient };
enum class KtlsMode { kAuto, kOn, kOff };

std::string_view ktls_mode_name(KtlsMode m);

struct TlsOptions {
  Role role = Role::kServer;
  identity::SvidSelector svid;
  std::shared_ptr<const policy::Authorizer> authorizer;  // required
  int min_version = TLS1_3_VERSION;                      // TLS1_2_VERSION or TLS1_3_VERSION
  int max_version = TLS1_3_VERSION;
  // TLS 1.3 suites in preference order (AES-GCM first: it has AES-NI and kTLS everywhere).
  std::string tls13_ciphersuites =
      "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
  // TLS 1.2 ciphers, only AEADs with forward secrecy.
  std::string tls12_ciphers =
      "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
      "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
      "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
  KtlsMode ktls = KtlsMode::kAuto;
  std::string server_name;  // client role: SNI to send, "" for none
  // Records per TLS 1.3 traffic key (config TlsConfig::key_update_records): the own record
  // layer re-keys there; a kernel AES-GCM direction ends the session there.
  uint64_t key_update_records = uint64_t{1} << 23;
  // TLS 1.3 session resumption (session_cache.h): a server issues one ticket per full handshake
  // and accepts it for ticket_lifetime at most (never past the peer's chain); a client caches
  // the newest ticket per remote endpoint and offers it.
  bool session_resumption = false;
  std::chrono::milliseconds ticket_lifetime{std::chrono::hours(1)};
  // ALPN protocol this side speaks besides plain bytes, "" for none. Client role: offered (and
  // the only one); server role: selected when the client offers it, and a client that offers
  // nothing gets the dedicated connection. "h2" carries multiplexed streams (docs/multiplexing.md).
  std::string alpn;
};

// What the verify callback concluded about one peer. Kept by the connection's Handshake, then
// by its TlsStream (ConnectionInfo::peer).
struct PeerOutcome {
  spiffe::Rejection rejection = spiffe::Rejection::kNone;
  std::optional<spiffe::SpiffeId> peer_id;
  std::string detail;          // reason for logs when rejected
  std::string authorized_by;   // the rule that allowed the peer
  bool verified = false;       // the callback ran and accepted
  // The verification parameters the handshake applied (the SSL's security level and flags), so
  // that the chain can be verified again later without the SSL object.
  spiffe::VerifyParams verify_params;
  // The chain the callback verified, kept so that the session can verify it again against
  // later bundles; null unless verified.
  std::shared_ptr<const VerifiedChain> chain;
};

// Per-connection state OpenSSL callbacks write into (SSL app data). Owned by whoever owns the SSL
// object: the Handshake, then the OpenSslStream when OpenSSL stays the record layer.
struct ConnectionState {
  PeerOutcome outcome;
  // The TLS 1.3 application traffic secrets 0 of both directions, captured from the key log for
  // the record layer that follows the handshake (kernel receive offload, or the userspace record
  // layer), then wiped. Never written anywhere.
  std::vector<unsigned char> peer_traffic_secret;
  std::vector<unsigned char> own_traffic_secret;
  // The peer sent a TLS 1.3 KeyUpdate (seen by OpenSSL on the userspace receive path).
  bool peer_key_update = false;

  // Session resumption (resumption.h). The peer as a ticket (server) or the client's cache
  // vouches for it, taken as the outcome when the handshake resumes; null otherwise.
  std::shared_ptr<const PeerOutcome> resumed_peer;
  // Why a ticket was not used (resumption.h kRefused*), "" when none was refused.
  std::string_view resumption_refused;
  std::string endpoint;          // client: the remote endpoint, key of the ticket cache
  bool ticket_received = false;  // client: a NewSessionTicket was cached
  // Records read after the handshake while counting (a client waiting for its ticket) and
  // NewSessionTickets written: where the record layer after OpenSSL starts its sequence numbers.
  bool count_read_records = false;
  uint64_t records_read = 0;
  uint64_t tickets_sent = 0;

  ~ConnectionState();
};

// One immutable SSL_CTX built from one snapshot.
class TlsContext {
 public:
  SSL_CTX* ssl_ctx() const { return ctx_.get(); }
  const spiffe::X509Svid& svid() const { return *svid_; }
  const identity::Snapshot& snapshot() const { return *snapshot_; }
  const TlsOptions& options() const { return *options_; }
  // The clock handshakes with this context verify at.
  const base::Clock& clock() const { return *clock_; }
  // Client with session resumption: the ticket cache of this context; null otherwise.
  SessionCache* sessions() const { return sessions_.get(); }

 private:
  friend class ContextProvider;
  static int verify_callback(X509_STORE_CTX* store_ctx, void* arg);
  static void keylog_callback(const SSL* ssl, const char* line);
  static int alpn_select_callback(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                                  const unsigned char* in, unsigned inlen, void* arg);
  static void msg_callback(int write_p, int version, int content_type, const void* buf,
                           size_t len, SSL* ssl, void* arg);
  // Session resumption (ticket_callbacks.cc).
  void enable_resumption(SSL_CTX* ctx);
  static int ticket_key_callback(SSL* ssl, unsigned char* name, unsigned char* iv,
                                 EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int enc);
  static int generate_ticket_callback(SSL* ssl, void* arg);
  static int client_hello_callback(SSL* ssl, int* alert, void* arg);
  static SSL_TICKET_RETURN decrypt_ticket_callback(SSL* ssl, SSL_SESSION* session,
                                                   const unsigned char* key_name,
                                                   size_t key_name_len, SSL_TICKET_STATUS status,
                                                   void* arg);
  static int new_session_callback(SSL* ssl, SSL_SESSION* session);

  base::SslCtxPtr ctx_;
  std::shared_ptr<const identity::Snapshot> snapshot_;
  std::shared_ptr<const spiffe::X509Svid> svid_;
  std::shared_ptr<const TlsOptions> options_;
  const base::Clock* clock_ = nullptr;
  std::unique_ptr<TicketKeys> ticket_keys_;  // server with resumption
  std::unique_ptr<SessionCache> sessions_;   // client with resumption
};

class ContextProvider {
 public:
  // `store` and `clock` must outlive the provider.
  ContextProvider(TlsOptions options, const identity::IdentityStore& store,
                  const base::Clock& clock);

  // The context for the newest snapshot. Fails (and new connections are refused) when there is
  // no snapshot yet, or the snapshot lacks the SVID this tunnel presents. Logically const: the
  // context built for a snapshot is cached.
  base::Result<std::shared_ptr<const TlsContext>> current() const;

  const TlsOptions& options() const { return *options_; }
  // The identity store's newest snapshot (null before the first and after a withdraw), for
  // checks of established sessions against it.
  std::shared_ptr<const identity::Snapshot> snapshot() const { return store_.current(); }

 private:
  base::Result<std::shared_ptr<const TlsContext>> build(
      std::shared_ptr<const identity::Snapshot> snapshot) const;

  std::shared_ptr<const TlsOptions> options_;
  const identity::IdentityStore& store_;
  const base::Clock& clock_;
  mutable std::mutex mutex_;
  mutable std::shared_ptr<const identity::Snapshot> cached_snapshot_;  // guarded by mutex_
  mutable std::shared_ptr<const TlsContext> cached_;                   // guarded by mutex_
};

// Decodes the hex secret of a key log line into `secret`, wiping what it held. The buffer is sized
// once, so no unwiped copy is left behind by growth; on bad hex it is wiped and left empty.
bool decode_traffic_secret(std::string_view hex, std::vector<unsigned char>& secret);

// Parses "1.2" / "1.3" into an OpenSSL version constant.
base::Result<int> parse_tls_version(std::string_view text);

}  // namespace spiffe_tunnel::tls
