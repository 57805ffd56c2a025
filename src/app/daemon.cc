#include "daemon.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "spiffe_tunnel/admin/admin_server.h"
#include "spiffe_tunnel/identity/expiry_watch.h"
#include "spiffe_tunnel/identity/identity_store.h"
#include "spiffe_tunnel/tls/ktls.h"
#include "spiffe_tunnel/tls/tls_context.h"
#include "spiffe_tunnel/tunnel/io_pool.h"
#include "spiffe_tunnel/tunnel/io_probe.h"
#include "spiffe_tunnel/tunnel/tunnel.h"
#include "spiffe_tunnel/workload/files_source.h"
#include "spiffe_tunnel/workload/workload_api_source.h"
#include "app_metrics.h"
#include "logging.h"
#include "reload_plan.h"
#include "socket_activation.h"
#include "systemd_notify.h"
#include "tunnel_set.h"
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

// Waits up to `tick` for SIGINT, SIGTERM or SIGHUP; returns the signal, or 0 when none came.
int wait_for_signal(std::chrono::milliseconds tick) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  timespec ts{};
  ts.tv_sec = tick.count() / 1000;
  ts.tv_nsec = (tick.count() % 1000) * 1'000'000;
  const int sig = sigtimedwait(&set, nullptr, &ts);
  return sig > 0 ? sig : 0;
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
admin::Readiness readiness(const identity::IdentityStore& store, const TunnelSet& tunnels) {
  admin::Readiness r{static_cast<bool>(store.current()), ""};
  if (!r.ready) {
    r.detail = "no identity held (not received yet, revoked or expired)\n";
  }
  tunnels.for_each([&](const tunnel::Tunnel& t) {
    const bool ok = t.ready();
    r.ready = r.ready && ok;
    r.detail += "tunnel " + t.name() + ": " + t.readiness_detail() + "\n";
  });
  return r;
}

std::string status_json(const identity::IdentityStore& store, const TunnelSet& tunnels) {
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
  tunnels.for_each([&](const tunnel::Tunnel& t) {
    j["tunnels"].push_back({{"name", t.name()},
                            {"listen", t.listen_address()},
                            {"target", t.context()->target.str()},
                            {"ready", t.ready()},
                            {"detail", t.readiness_detail()},
                            {"active_sessions", t.active_sessions()}});
  });
  // Previous versions of reloaded or removed tunnels, until their sessions have ended.
  tunnels.for_each_draining([&](const tunnel::Tunnel& t) {
    j["draining"].push_back({{"name", t.name()}, {"active_sessions", t.active_sessions()}});
  });
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
base::Status probe_ktls_if_required(const Config& config) {
  for (const auto& t : config.tunnels) {
    if (t.tls.ktls == config::KtlsMode::kOn) {
      if (auto st = tls::ktls::probe_kernel_tls(); !st) {
        return base::make_error("tunnel \"" + t.name + "\": ktls is \"on\" but " +
                                st.error().message);
      }
      return {};
    }
  }
  return {};
}

// Reload outcomes; see docs/metrics.md.
struct ReloadMetrics {
  explicit ReloadMetrics(base::MetricsRegistry& r)
      : success(r.counter("spiffe_tunnel_config_reloads_total",
                          "Configuration reloads, by result.", {{"result", "success"}})),
        failure(r.counter("spiffe_tunnel_config_reloads_total", "", {{"result", "failure"}})),
        failures(r.counter("spiffe_tunnel_config_reload_failures_total",
                           "Reloads rejected (invalid file, port in use); the running "
                           "configuration stayed.")),
        last_ok(r.gauge("spiffe_tunnel_config_last_reload_successful",
                        "1 when the last reload (or the start) applied its configuration.")) {
    last_ok.set(1);
  }
  base::Counter& success;
  base::Counter& failure;
  base::Counter& failures;
  base::Gauge& last_ok;
};

// The daemon's parts and the order in which they come up and go down: build() creates
// everything that can fail on bad input, start() waits for the first identity and starts
// accepting, run_until_signal() serves (and reloads on SIGHUP), drain() shuts down. Only the main
// thread calls these. Members are declared so that they are destroyed in reverse dependency
// order: sessions (frames in the pool) hold tunnel contexts that point into the store and the
// metrics registry, and the identity source calls into the expiry watch and the identity metrics.
class Daemon {
 public:
  Daemon(Config config, ConfigLoader loader)
      : config_(std::move(config)), loader_(std::move(loader)) {
    register_build_info(metrics_);
  }
  ~Daemon() { stop_services(); }

  // Logs the reason and returns false when the configuration or environment does not allow a
  // start (bad identity files, kTLS missing, a port in use).
  bool build();
  // Starts the identity source and waits for the first identity, then the data path. False when
  // SIGINT/SIGTERM came first.
  bool start();
  // Serves until SIGINT/SIGTERM: watchdog pings, expiry checks, retiring drained tunnel
  // versions, and a reload on each SIGHUP.
  void run_until_signal();
  // Stops accepting everywhere, lets sessions end until drain_timeout, closes the rest, stops.
  void drain();

 private:
  bool build_source();
  // Takes the sockets systemd passed (for systemd:NAME listeners) before anything else runs.
  bool take_activated_sockets();
  bool build_admin();
  void start_source();
  // Re-reads the configuration and applies what changed; on any error the running one stays.
  void reload();
  // The summary line, or why nothing changed.
  base::Result<std::string> try_reload();
  // Stops the identity source, admin and the data path. Safe to call twice.
  void stop_services();

  Config config_;  // the configuration running now (replaced by each successful reload)
  ConfigLoader loader_;
  base::MetricsRegistry metrics_;
  IdentityMetrics identity_metrics_{metrics_};
  ReloadMetrics reload_metrics_{metrics_};
  identity::IdentityStore store_;
  identity::ExpiryWatch expiry_{store_, base::SystemClock::instance()};
  std::unique_ptr<workload::IdentitySource> source_;
  bool source_started_ = false;
  ActivatedSockets activated_;  // kept open: tunnels listen on duplicates
  std::unique_ptr<tunnel::IoPool> pool_;
  std::unique_ptr<tunnel::IoProbe> io_probe_;  // gates the watchdog on the data-path threads
  std::unique_ptr<TunnelSet> tunnels_;
  std::unique_ptr<admin::AdminServer> admin_;
  SystemdNotifier notifier_;
};

bool Daemon::build() {
  if (!take_activated_sockets() || !build_source()) {
    return false;
  }
  if (auto st = probe_ktls_if_required(config_); !st) {
    spdlog::error("{}", st.error().message);
    return false;
  }
  const std::size_t threads =
      config_.threads != 0 ? config_.threads : std::max(1u, std::thread::hardware_concurrency());
  pool_ = std::make_unique<tunnel::IoPool>(threads, config_.busy_poll);
  io_probe_ = std::make_unique<tunnel::IoProbe>(*pool_, data_path_probe_limit(notifier_));
  if (config_.busy_poll.count() > 0) {
    spdlog::info("data path: {} thread(s), busy-polling {}us after each event", threads,
                 config_.busy_poll.count());
  } else {
    spdlog::info("data path: {} thread(s)", threads);
  }
  tunnels_ = std::make_unique<TunnelSet>(*pool_, metrics_, store_, activated_);
  if (auto st = tunnels_->build(config_.tunnels); !st) {
    spdlog::error("{}", st.error().message);
    return false;
  }
  activated_.close_unused();
  return build_admin();
}

bool Daemon::build_source() {
  const bool workload_api = config_.identity.kind == config::IdentityConfig::Kind::kWorkloadApi;
  auto made = make_source(config_, workload_api ? workload_api_observer(metrics_)
                                                : workload::WorkloadApiObserver{});
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

// Admin serves as soon as it is built, so /healthz and /readyz answer while the daemon waits
// for its first identity.
bool Daemon::build_admin() {
  if (!config_.admin) {
    return true;
  }
  const config::HostPort& hp = tcp_address(*config_.admin);
  auto made = admin::AdminServer::create(
      hp.host, hp.port, metrics_,
      {.readiness = [this] { return readiness(store_, *tunnels_); },
       .status_json = [this] { return status_json(store_, *tunnels_); }});
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
  // Established sessions follow every identity change: a bundle that no longer verifies a
  // peer's chain, or the loss of the SVID a session presents, ends it.
  store_.subscribe([this](const std::shared_ptr<const identity::Snapshot>&) {
    tunnels_->recheck_identity();
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
  tunnels_->start();
  notifier_.ready("spiffe-tunnel: " + std::to_string(tunnels_->size()) + " tunnel(s) listening");
  return true;
}

void Daemon::run_until_signal() {
  const auto tick = std::min(notifier_.watchdog_interval() / 2, std::chrono::milliseconds(200));
  for (;;) {
    const int sig = wait_for_signal(tick);
    if (io_probe_->check()) {
      notifier_.watchdog();
    }
    expiry_.check();
    tunnels_->reap();
    if (sig == SIGINT || sig == SIGTERM) {
      spdlog::info("received {}, draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
      return;
    }
    if (sig == SIGHUP) {
      reload();
    }
  }
}

void Daemon::reload() {
  if (!loader_) {
    spdlog::warn("SIGHUP: the tunnels came from command-line flags; there is no file to reload");
    return;
  }
  notifier_.reloading();
  // Metrics first, then the log line: whoever sees the line sees the counters too.
  if (auto done = try_reload(); done) {
    reload_metrics_.success.inc();
    reload_metrics_.last_ok.set(1);
    spdlog::info("{}", *done);
  } else {
    reload_metrics_.failure.inc();
    reload_metrics_.failures.inc();
    reload_metrics_.last_ok.set(0);
    // One line per error: a file can have several, each naming its file:line:column.
    std::istringstream lines(done.error().message);
    for (std::string line; std::getline(lines, line);) {
      spdlog::error("reload failed, the running configuration stays: {}", line);
    }
  }
  notifier_.ready("spiffe-tunnel: " + std::to_string(tunnels_->size()) + " tunnel(s) listening");
}

base::Result<std::string> Daemon::try_reload() {
  spdlog::info("SIGHUP: reloading {}", config_.file);
  auto next = loader_();
  if (!next) {
    return next.error();
  }
  if (auto st = probe_ktls_if_required(*next); !st) {
    return st.error();
  }
  const ReloadPlan plan = plan_reload(config_, *next);
  for (const auto& setting : plan.need_restart) {
    spdlog::warn("reload: {} changed; this takes a restart, the running value stays", setting);
  }
  if (auto st = tunnels_->apply(plan, next->tunnels, next->drain_timeout); !st) {
    return st.error();
  }
  if (plan.log_level_changed) {
    set_log_level(next->log_level);
  }
  std::size_t counts[5] = {};
  for (const auto& c : plan.tunnels) {
    ++counts[static_cast<int>(c.kind)];
  }
  config_ = effective_config(config_, std::move(*next));
  return fmt::format(
      "reload: done: {} unchanged, {} policy changed, {} replaced, {} removed, {} added",
      counts[0], counts[1], counts[2], counts[3], counts[4]);
}

void Daemon::drain() {
  notifier_.stopping();
  // One deadline for every tunnel: all stop accepting first, then each waits for what is left
  // of the same drain_timeout and closes the sessions still open when it passes.
  tunnels_->drain(std::chrono::steady_clock::now() + config_.drain_timeout);
  stop_services();
  tunnels_->clear();
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

int run_daemon(const Config& config, ConfigLoader loader) {
  block_signals();
  Daemon daemon(config, std::move(loader));
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
