#include "wait_ready.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <ctime>
#include <iostream>
#include <mutex>
#include <optional>

#include "spiffe_tunnel/config/values.h"
#include "spiffe_tunnel/identity/readiness.h"
#include "spiffe_tunnel/workload/workload_api_source.h"
#include "wiring.h"

namespace spiffe_tunnel::app {
namespace {

using Clock = std::chrono::steady_clock;

// A short cap on the Workload API retry delay: a waiting workload should notice a new
// registration entry soon, and nothing else is served meanwhile.
constexpr std::chrono::milliseconds kRetryCap{5000};

// What the source has said so far; written by its threads, read by the main thread.
class Progress {
 public:
  workload::SourceCallbacks callbacks() {
    return {
        .on_update =
            [this](workload::X509Context ctx) {
              auto s = std::make_shared<identity::Snapshot>();
              s->svids = std::move(ctx.svids);
              s->bundles = std::move(ctx.bundles);
              std::lock_guard lock(mutex_);
              snapshot_ = std::move(s);
              revoked_.clear();
            },
        .on_revoked =
            [this](const std::string& reason) {
              std::lock_guard lock(mutex_);
              snapshot_.reset();
              revoked_ = reason;
            },
        .on_failure =
            [this](const workload::SourceFailure& f) {
              std::lock_guard lock(mutex_);
              failure_ = f;
            },
    };
  }

  std::shared_ptr<const identity::Snapshot> snapshot() const {
    std::lock_guard lock(mutex_);
    return snapshot_;
  }

  // Why the source has not delivered what is wanted, in words for the operator.
  std::string why_not(const identity::ReadinessRequirement& want, const std::string& source) const {
    std::lock_guard lock(mutex_);
    if (snapshot_) {
      auto ready = identity::check_ready(*snapshot_, want);
      return source + " delivered an identity, but " +
             (ready ? "it became ready just now" : ready.error().message);
    }
    if (!revoked_.empty()) {
      return "the identity was revoked: " + revoked_;
    }
    if (!failure_) {
      return "no answer from " + source + " yet";
    }
    using Kind = workload::SourceFailure::Kind;
    switch (failure_->kind) {
      case Kind::kUnreachable:
        return "no connection to " + source + " (last error: " + failure_->detail +
               "); is the agent running, and is this its socket?";
      case Kind::kNoIdentity:
        return "connected to " + source + ", but it issued no SVID to this workload (" +
               failure_->detail + "); is a registration entry in place for it (e.g. selector " +
               "unix:uid:" + std::to_string(::getuid()) + ")?";
      case Kind::kOther:
        break;
    }
    return source + " delivered no identity: " + failure_->detail;
  }

 private:
  mutable std::mutex mutex_;
  // Guarded by mutex_:
  std::shared_ptr<const identity::Snapshot> snapshot_;
  std::string revoked_;
  std::optional<workload::SourceFailure> failure_;
};

base::Result<std::unique_ptr<workload::IdentitySource>> open_source(
    const config::IdentityConfig& identity) {
  if (identity.kind == config::IdentityConfig::Kind::kWorkloadApi) {
    auto s = workload::WorkloadApiSource::create(
        {.address = identity.workload_api, .max_backoff = kRetryCap});
    if (!s) {
      return s.error();
    }
    return std::unique_ptr<workload::IdentitySource>(std::move(*s));
  }
  config::Config c;
  c.identity = identity;
  return make_source(c);
}

std::string utc_text(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// "ready: SVID spiffe://a/x (hint h) valid until ...; bundles a, b; from workload-api ..."
std::string ready_line(const spiffe::X509Svid& svid, const identity::Snapshot& snap,
                       const std::string& source) {
  std::string tds;
  for (const auto& td : snap.bundles.trust_domains()) {
    tds += (tds.empty() ? "" : ", ") + td.name();
  }
  return "ready: SVID " + svid.id.str() + (svid.hint.empty() ? "" : " (hint " + svid.hint + ")") +
         " valid until " + utc_text(svid.not_after()) + "; bundles " + tds + "; from " + source;
}

// Blocks until ready, the deadline, or a signal; returns the exit code.
int wait_until_ready(const Progress& progress, const identity::ReadinessRequirement& want,
                     const std::string& source, std::chrono::milliseconds timeout,
                     const sigset_t& signals) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto snap = progress.snapshot()) {
      if (auto svid = identity::check_ready(*snap, want)) {
        std::cout << ready_line(**svid, *snap, source) << std::endl;
        return kWaitReadyOk;
      }
    }
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero()) {
      std::cerr << "spiffe-tunnel wait-ready: not ready after " << config::format_duration(timeout)
                << ": " << progress.why_not(want, source) << "\n";
      return kWaitReadyTimeout;
    }
    const auto tick = std::min<Clock::duration>(left, std::chrono::milliseconds(100));
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(tick).count();
    timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    const int sig = sigtimedwait(&signals, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      std::cerr << "spiffe-tunnel wait-ready: " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
                << " before ready: " << progress.why_not(want, source) << "\n";
      return 128 + sig;
    }
  }
}

}  // namespace

int run_wait_ready(const config::WaitReadyConfig& c) {
  // Blocked before the source's threads start, so that only sigtimedwait below takes them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto source = open_source(c.identity);
  if (!source) {
    std::cerr << "spiffe-tunnel wait-ready: " << source.error().message << "\n";
    return kWaitReadyBadUsage;
  }
  const std::string name = (*source)->describe();
  const identity::ReadinessRequirement want{{c.svid_id, c.svid_hint}, c.trust_domains};
  spdlog::info("wait-ready: waiting up to {} for an SVID {} from {}",
               config::format_duration(c.timeout), want.svid.describe(), name);
  Progress progress;
  (*source)->start(progress.callbacks());
  const int rc = wait_until_ready(progress, want, name, c.timeout, signals);
  (*source)->stop();
  return rc;
}

}  // namespace spiffe_tunnel::app
