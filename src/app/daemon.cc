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
    r.detail += "tunnel " + t->options().name + ": " + t->readiness_detail() + "\n";
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
    const auto ep = t->local_endpoint();
    j["tunnels"].push_back({{"name", t->options().name},
                            {"listen", ep.address().to_string() + ":" + std::to_string(ep.port())},
                            {"target", t->options().target_host + ":" + t->options().target_port},
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

}  // namespace

int run_daemon(const Config& config) {
  // Signals are taken synchronously by the main thread; every other thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  identity::IdentityStore store;
  identity::ExpiryWatch expiry(store, base::SystemClock::instance());
  auto made_source = make_source(config);
  if (!made_source) {
    spdlog::error("identity: {}", made_source.error().message);
    return 1;
  }
  std::unique_ptr<workload::IdentitySource> source = std::move(*made_source);
  if (auto* files = dynamic_cast<workload::FilesSource*>(source.get())) {
    // Fail fast on a bad initial set; later changes are only warned about.
    auto first = files->load();
    if (!first) {
      spdlog::error("{}", first.error().message);
      return 1;
    }
  }

  for (const auto& t : config.tunnels) {
    if (t.tls.ktls == config::KtlsMode::kOn) {
      if (auto st = tls::ktls::probe_kernel_tls(); !st) {
        spdlog::error("tunnel \"{}\": ktls is \"on\" but {}", t.name, st.error().message);
        return 1;
      }
      break;
    }
  }

  base::MetricsRegistry metrics;
  const std::size_t threads =
      config.threads != 0 ? config.threads : std::max(1u, std::thread::hardware_concurrency());
  tunnel::IoPool pool(threads, config.busy_poll);
  if (config.busy_poll.count() > 0) {
    spdlog::info("data path: {} thread(s), busy-polling {}us after each event", threads,
                 config.busy_poll.count());
  } else {
    spdlog::info("data path: {} thread(s)", threads);
  }
  std::vector<std::unique_ptr<tunnel::Tunnel>> tunnels;
  for (const auto& t : config.tunnels) {
    const TunnelPolicy policy = make_policy(t);
    auto provider = std::make_unique<tls::ContextProvider>(make_tls_options(t, policy), store,
                                                           base::SystemClock::instance());
    auto tunnel =
        tunnel::Tunnel::create(make_tunnel_options(t, policy), std::move(provider), pool, metrics);
    if (!tunnel) {
      spdlog::error("{}", tunnel.error().message);
      return 1;
    }
    tunnels.push_back(std::move(*tunnel));
  }

  std::unique_ptr<admin::AdminServer> admin_server;
  if (config.admin) {
    const config::HostPort& hp = tcp_address(*config.admin);
    auto made = admin::AdminServer::create(
        hp.host, hp.port, metrics,
        {.readiness = [&store, &tunnels] { return readiness(store, tunnels); },
         .status_json = [&store, &tunnels] { return status_json(store, tunnels); }});
    if (!made) {
      spdlog::error("{}", made.error().message);
      return 1;
    }
    admin_server = std::move(*made);
    admin_server->start();
  }

  IdentityMetrics identity_metrics(metrics);
  store.subscribe([&identity_metrics](const std::shared_ptr<const identity::Snapshot>& s) {
    identity_metrics.observe(s);
  });
  const std::string source_name = source->describe();
  source->start({
      .on_update =
          [&expiry, &identity_metrics, source_name](workload::X509Context ctx) {
            identity_metrics.updates.inc();
            expiry.publish(to_snapshot(std::move(ctx), source_name));
          },
      .on_revoked =
          [&expiry, &identity_metrics](const std::string& reason) {
            identity_metrics.revocations.inc();
            spdlog::error("identity revoked: {}; refusing new connections", reason);
            expiry.withdraw();
          },
  });

  // Listeners are bound (so a port in use fails at startup) but accept nothing until the first
  // identity arrives: connections wait in the backlog instead of being refused.
  if (!store.current()) {
    spdlog::info("waiting for the first identity from {}", source_name);
    if (!wait_for_identity(store)) {
      source->stop();
      if (admin_server) {
        admin_server->stop();
      }
      return 0;
    }
  }
  pool.start();
  for (auto& t : tunnels) {
    t->start();
  }
  SystemdNotifier notifier;
  notifier.ready("spiffe-tunnel: " + std::to_string(tunnels.size()) + " tunnel(s) listening");

  wait_for_stop(notifier, expiry);
  notifier.stopping();
  for (auto& t : tunnels) {
    t->stop();
  }
  const auto deadline = std::chrono::steady_clock::now() + config.drain_timeout;
  auto open_sessions = [&tunnels] {
    std::size_t n = 0;
    for (auto& t : tunnels) {
      n += t->active_sessions();
    }
    return n;
  };
  while (open_sessions() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (const std::size_t n = open_sessions(); n > 0) {
    spdlog::warn("drain timeout: closing {} open session(s)", n);
    for (auto& t : tunnels) {
      t->close_sessions();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  source->stop();
  if (admin_server) {
    admin_server->stop();
  }
  pool.stop();
  tunnels.clear();
  spdlog::info("stopped");
  return 0;
}

}  // namespace spiffe_tunnel::app
