#pragma once
// OpaClient: asks an Open Policy Agent server whether a verified peer may use a tunnel, through
// OPA's REST data API (POST <path> with {"input": {...}}; the answer's "result" must be true).
// Runs after the allow-list, once the handshake has verified the peer. Decisions are cached per
// (tunnel, mode, local SVID, peer) for a short time; errors and timeouts deny (fail closed) and
// are not cached.
// One client may be shared by the sessions of many threads; decide() runs on the caller's
// executor.

#include <asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "spiffe_tunnel/base/metrics.h"
#include "spiffe_tunnel/spiffe/spiffe_id.h"

namespace spiffe_tunnel::policy {

// Where OPA listens, already parsed (config reads it from an http:// URL; https is not supported
// because OPA runs beside the daemon).
struct OpaOptions {
  std::string host;  // name or address, IPv6 without brackets
  uint16_t port = 8181;
  std::string path = "/v1/data";  // /v1/data/<package path>/<rule>
  std::chrono::milliseconds timeout{2000};
  std::chrono::milliseconds cache_ttl{30000};  // 0: no cache
  std::size_t cache_entries = 4096;

  // "http://host:port/path", for messages.
  std::string url() const;
};

// What the policy sees as `input`.
struct OpaInput {
  std::string tunnel;
  std::string mode;  // "server" or "client"
  spiffe::SpiffeId peer;
  std::string local_id;  // the SVID this tunnel presents
};

// The key under which a decision for `input` is cached: the tunnel, its mode, the local SVID's ID
// and the peer's ID (every field of the input).
std::string decision_cache_key(const OpaInput& input);

struct OpaDecision {
  bool allowed = false;
  bool error = false;    // OPA unreachable, timed out or answered nonsense
  std::string reason;    // for logs
  bool timed_out = false;  // the error was OPA not answering within the timeout
};

// Decisions of one tunnel's OPA client, registered under the tunnel's name: see
// docs/metrics.md. The registry must outlive them; updates are thread-safe.
struct OpaMetrics {
  OpaMetrics(base::MetricsRegistry& registry, const std::string& tunnel);
  // spiffe_tunnel_opa_decisions_total{tunnel,outcome}
  base::Counter& allow;
  base::Counter& deny;
  base::Counter& error;
  base::Counter& timeout;
  base::Counter& cached_allow;
  base::Counter& cached_deny;
  // spiffe_tunnel_opa_decision_duration_seconds{tunnel}: queries sent to OPA, cache hits not.
  base::Histogram& latency;
};

class OpaClient {
 public:
  // `metrics` null: decisions are not counted anywhere visible.
  explicit OpaClient(OpaOptions options, std::shared_ptr<OpaMetrics> metrics = nullptr);

  // Takes the input by value: it must live in the coroutine frame.
  asio::awaitable<OpaDecision> decide(OpaInput input);
  const OpaOptions& options() const { return options_; }

 private:
  asio::awaitable<OpaDecision> query(const OpaInput& input);
  void count(const OpaDecision& d, std::chrono::steady_clock::duration took);

  OpaOptions options_;
  std::string port_;  // options_.port as the resolver wants it
  std::unique_ptr<base::MetricsRegistry> unused_registry_;  // backs metrics_ when none is given
  std::shared_ptr<OpaMetrics> metrics_;                      // never null

  struct Entry {
    bool allowed;
    std::chrono::steady_clock::time_point expires;
  };
  std::mutex mutex_;
  std::unordered_map<std::string, Entry> cache_;  // guarded by mutex_
};

}  // namespace spiffe_tunnel::policy
