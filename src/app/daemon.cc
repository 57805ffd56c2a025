#include "daemon.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <thread>

#include <nlohmann/json.hpp>

#include "spiffe_tunnel/admin/admin_server.h"
#include "spiffe_tunnel/identity/expiry_watch.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tls/ktls.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tunnel/io_pool.h"
#include "spiffe_tunnel/tunnel/tunnel.h"
#include "spiffe_tunnel/workload/files_source.h"
#include "spiffe_tunnel/workload/workload_api_source.h"
#include "socket_activation.h"
#include "systemd_notify.h"
#include "wiring.h"

namespace spiffe_tunnel::app {
namespace {

using config::Config;

std::shared_ptr<const identity::Snapshot> to_snapshot(workload::X509Context ctx,
                                                      const std::string& source) {
  auto s = std::make_shared<identity::Snapshot>();
  s->svids = std::move(ctx.svids);
  s->bundles = std::move(ctx.bundles);
  s->source = source;
  return s;
}

// Blocks until SIGINT/SIGTERM, pinging the systemd watchdog and checking the identity's expiry
// meanwhile.
void wait_for_stop(SystemdNotifier& notifier, identity::ExpiryWatch& expiry) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  const auto tick = std::min(notifier.watchdog_interval() / 2, std::chrono::milliseconds(200));
  for (;;) {
    timespec ts{};
    ts.tv_sec = tick.count() / 1000;
    ts.tv_nsec = (tick.count() % 1000) * 1'000'000;
    const int sig = sigtimedwait(&set, nullptr, &ts);
    notifier.watchdog();
    expiry.check();
    if (sig == SIGINT || sig == SIGTERM) {
      spdlog::info("received {}, draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
      return;
    }
    if (sig == SIGHUP) {
      spdlog::info("SIGHUP: identity files are reloaded automatically; nothing else to reload");
    }
  }
}

// Waits for the identity store's first snapshot; false when SIGINT/SIGTERM comes first.
bool wait_for_identity(const identity::IdentityStore& store) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  while (!store.current()) {
    timespec ts{0, 50'000'000};
    const int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      spdlog::info("stopping before the first identity arrived");
      return false;
    }
  }
  return true;
}

// One line per tunnel: whether it can take connections now, and if not, why.
admin::Readiness readiness(const identity::IdentityStore& store,
                           const std::vector<std::unique_ptr<tunnel::Tunnel>>& tunnels) {
  admin::Readiness r{static_cast<bool>(store.current()), ""};
  if (!r.ready) {
    r.detail = "no identity held (not received yet, revoked or expired)\n";
  }
  for (const auto& t : tunnels) {
    const bool ok = t->ready();
    r.ready = r.ready && ok;
    r.detail += "tunnel " + t->name() + ": " + t->readiness_detail() + "\n";
  }
  return r;
}

std::string status_json(const identity::IdentityStore& store,
                        const std::vector<std::unique_ptr<tunnel::Tunnel>>& tunnels) {
  nlohmann::json j;
  auto snap = store.current();
  j["identity"]["ready"] = static_cast<bool>(snap);
  if (snap) {
    j["identity"]["source"] = snap->source;
    for (const auto& s : snap->svids) {
      j["identity"]["svids"].push_back(
          {{"spiffe_id", s->id.str()},
           {"hint", s->hint},
           {"serial", base::serial_hex(s->leaf())},
           {"not_after_unix", std::chrono::duration_cast<std::chrono::seconds>(
                                  s->not_after().time_since_epoch())
                                  .count()}});
    }
    for (const auto& td : snap->bundles.trust_domains()) {
      j["identity"]["trust_domains"].push_back(td.name());
    }
  }
  for (const auto& t : tunnels) {
    j["tunnels"].push_back({{"name", t->name()},
                            {"listen", t->listen_address()},
                            {"target", t->context()->target.str()},
                            {"ready", t->ready()},
                            {"detail", t->readiness_detail()},
                            {"active_sessions", t->active_sessions()}});
  }
  return j.dump(2) + "\n";
}

// Publishes identity gauges alongside every snapshot change.
struct IdentityMetrics {
  explicit IdentityMetrics(base::MetricsRegistry& r)
      : updates(r.counter("spiffe_tunnel_identity_updates_total",
                          "Identity snapshots received from the identity source.")),
        revocations(r.counter("spiffe_tunnel_identity_revocations_total",
                              "Times the identity source withdrew every identity.")),
        ready(r.gauge("spiffe_tunnel_identity_ready", "1 when an identity snapshot is held.")),
        svids(r.gauge("spiffe_tunnel_identity_svids", "SVIDs in the current snapshot.")),
        expiry(r.gauge("spiffe_tunnel_identity_expiry_timestamp_seconds",
                       "notAfter of the earliest-expiring SVID held, as a Unix time.")) {}
  void observe(const std::shared_ptr<const identity::Snapshot>& s) {
    ready.set(s ? 1 : 0);
    svids.set(s ? static_cast<int64_t>(s->svids.size()) : 0);
    expiry.set(s ? std::chrono::duration_cast<std::chrono::seconds>(
                       s->earliest_expiry().time_since_epoch())
                       .count()
                 : 0);
  }
  base::Counter& updates;
  base::Counter& revocations;
  base::Gauge& ready;
  base::Gauge& svids;
  base::Gauge& expiry;
};

// Takes SIGINT/SIGTERM/SIGHUP synchronously on the main thread (every other thread inherits the
// mask) and ignores SIGPIPE.
void block_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

// ktls: on needs kernel TLS; checked once for all tunnels, before anything binds.
bool probe_ktls_if_required(const Config& config) {
  for (const auto& t : config.tunnels) {
    if (t.tls.ktls == config::KtlsMode::kOn) {
      if (auto st = tls::ktls::probe_kernel_tls(); !st) {
        spdlog::error("tunnel \"{}\": ktls is \"on\" but {}", t.name, st.error().message);
        return false;
      }
      return true;
    }
  }
  return true;
}

// The daemon's parts and the order in which they come up and go down: build() creates
// everything that can fail on bad input, start() waits for the first identity and starts
// accepting, run_until_signal() serves, drain() shuts down. Only the main thread calls these.
// Members are declared so that they are destroyed in reverse dependency order: sessions (frames
// in the pool) hold tunnel contexts that point into the store and the metrics registry, and the
// identity source calls into the expiry watch and the identity metrics.
class Daemon {
 public:
  explicit Daemon(const Config& config) : config_(config) {}
  ~Daemon() { stop_services(); }

  // Logs the reason and returns false when the configuration or environment does not allow a
  // start (bad identity files, kTLS missing, a port in use).
  bool build();
  // Starts the identity source and waits for the first identity, then the data path. False when
  // SIGINT/SIGTERM came first.
  bool start();
  // Serves until SIGINT/SIGTERM: watchdog pings, expiry checks, SIGHUP logged and ignored.
  void run_until_signal() { wait_for_stop(notifier_, expiry_); }
  // Stops accepting everywhere, lets sessions end until drain_timeout, closes the rest, stops.
  void drain();

 private:
  bool build_source();
  // Takes the sockets systemd passed (for systemd:NAME listeners) before anything else runs.
  bool take_activated_sockets();
  bool build_tunnels();
  bool build_admin();
  void start_source();
  // Stops the identity source, admin and the data path. Safe to call twice.
  void stop_services();

  const Config& config_;
  base::MetricsRegistry metrics_;
  IdentityMetrics identity_metrics_{metrics_};
  identity::IdentityStore store_;
  identity::ExpiryWatch expiry_{store_, base::SystemClock::instance()};
  std::unique_ptr<workload::IdentitySource> source_;
  bool source_started_ = false;
  ActivatedSockets activated_;  // kept open: tunnels listen on duplicates
  std::unique_ptr<tunnel::IoPool> pool_;
  std::vector<std::unique_ptr<tunnel::Tunnel>> tunnels_;
  std::unique_ptr<admin::AdminServer> admin_;
  SystemdNotifier notifier_;
};

bool Daemon::build() {
  if (!take_activated_sockets() || !build_source() || !probe_ktls_if_required(config_)) {
    return false;
  }
  const std::size_t threads =
      config_.threads != 0 ? config_.threads : std::max(1u, std::thread::hardware_concurrency());
  pool_ = std::make_unique<tunnel::IoPool>(threads, config_.busy_poll);
  if (config_.busy_poll.count() > 0) {
    spdlog::info("data path: {} thread(s), busy-polling {}us after each event", threads,
                 config_.busy_poll.count());
  } else {
    spdlog::info("data path: {} thread(s)", threads);
  }
  return build_tunnels() && build_admin();
}

bool Daemon::build_source() {
  auto made = make_source(config_);
  if (!made) {
    spdlog::error("identity: {}", made.error().message);
    return false;
  }
  source_ = std::move(*made);
  if (auto* files = dynamic_cast<workload::FilesSource*>(source_.get())) {
    // Fail fast on a bad initial set; later changes are only warned about.
    auto first = files->load();
    if (!first) {
      spdlog::error("{}", first.error().message);
      return false;
    }
  }
  return true;
}

bool Daemon::take_activated_sockets() {
  auto passed = ActivatedSockets::take_from_environment();
  if (!passed) {
    spdlog::error("{}", passed.error().message);
    return false;
  }
  activated_ = std::move(*passed);
  return true;
}

bool Daemon::build_tunnels() {
  for (const auto& t : config_.tunnels) {
    const TunnelPolicy policy = make_policy(t);
    auto provider = std::make_unique<tls::ContextProvider>(make_tls_options(t, policy), store_,
                                                           base::SystemClock::instance());
    tunnel::TunnelOptions options = make_tunnel_options(t, policy);
    if (auto* inherited = std::get_if<tunnel::InheritedSocket>(&options.listen)) {
      auto fd = activated_.take(inherited->name);
      if (!fd) {
        spdlog::error("tunnel \"{}\": listen {}: {}", t.name, t.listen.str(), fd.error().message);
        return false;
      }
      inherited->fd = *fd;
    }
    auto made = tunnel::Tunnel::create(std::move(options), std::move(provider), *pool_, metrics_);
    if (!made) {
      spdlog::error("{}", made.error().message);
      return false;
    }
    tunnels_.push_back(std::move(*made));
  }
  activated_.close_unused();
  return true;
}

// Admin serves as soon as it is built, so /healthz and /readyz answer while the daemon waits
// for its first identity.
bool Daemon::build_admin() {
  if (!config_.admin) {
    return true;
  }
  const config::HostPort& hp = tcp_address(*config_.admin);
  auto made = admin::AdminServer::create(
      hp.host, hp.port, metrics_,
      {.readiness = [this] { return readiness(store_, tunnels_); },
       .status_json = [this] { return status_json(store_, tunnels_); }});
  if (!made) {
    spdlog::error("{}", made.error().message);
    return false;
  }
  admin_ = std::move(*made);
  admin_->start();
  return true;
}

void Daemon::start_source() {
  store_.subscribe([this](const std::shared_ptr<const identity::Snapshot>& s) {
    identity_metrics_.observe(s);
  });
  source_->start({
      .on_update =
          [this, source_name = source_->describe()](workload::X509Context ctx) {
            identity_metrics_.updates.inc();
            expiry_.publish(to_snapshot(std::move(ctx), source_name));
          },
      .on_revoked =
          [this](const std::string& reason) {
            identity_metrics_.revocations.inc();
            spdlog::error("identity revoked: {}; refusing new connections", reason);
            expiry_.withdraw();
          },
  });
  source_started_ = true;
}

bool Daemon::start() {
  start_source();
  // Listeners are bound (so a port in use fails at startup) but accept nothing until the first
  // identity arrives: connections wait in the backlog instead of being refused.
  if (!store_.current()) {
    spdlog::info("waiting for the first identity from {}", source_->describe());
    if (!wait_for_identity(store_)) {
      return false;
    }
  }
  pool_->start();
  for (auto& t : tunnels_) {
    t->start();
  }
  notifier_.ready("spiffe-tunnel: " + std::to_string(tunnels_.size()) + " tunnel(s) listening");
  return true;
}

void Daemon::drain() {
  notifier_.stopping();
  // One deadline for every tunnel: all stop accepting first, then each waits for what is left
  // of the same drain_timeout and closes the sessions still open when it passes.
  const auto deadline = std::chrono::steady_clock::now() + config_.drain_timeout;
  for (auto& t : tunnels_) {
    t->stop();
  }
  for (auto& t : tunnels_) {
    t->drain(deadline);
  }
  stop_services();
  tunnels_.clear();
  spdlog::info("stopped");
}

void Daemon::stop_services() {
  if (source_started_) {
    source_->stop();
    source_started_ = false;
  }
  if (admin_) {
    admin_->stop();
  }
  if (pool_) {
    pool_->stop();
  }
}

}  // namespace

int run_daemon(const Config& config) {
  block_signals();
  Daemon daemon(config);
  if (!daemon.build()) {
    return 1;
  }
  if (!daemon.start()) {
    return 0;
  }
  daemon.run_until_signal();
  daemon.drain();
  return 0;
}

}  // namespace spiffe_tunnel::app
