#include "spiffe_tunnel/identity/expiry_watch.h"

#include <openssl/asn1.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <ctime>
#include <string>

namespace spiffe_tunnel::identity {
namespace {

using Clock = std::chrono::system_clock;

Clock::time_point not_before(const spiffe::X509Svid& svid) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(X509_get0_notBefore(svid.leaf()), &tm) != 1) {
    return svid.not_after();  // unreadable: treat the lifetime as spent, so we warn
  }
  return Clock::from_time_t(timegm(&tm));
}

std::string utc_text(Clock::time_point t) {
  const std::time_t tt = Clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string duration_text(Clock::duration d) {
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(d).count();
  if (s >= 3600) {
    return std::to_string(s / 3600) + "h" + std::to_string(s % 3600 / 60) + "m";
  }
  return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
}

}  // namespace

ExpiryWatch::ExpiryWatch(IdentityStore& store, const base::Clock& clock, ExpiryWatchOptions options)
    : store_(store), clock_(clock), options_(options) {}

void ExpiryWatch::publish(std::shared_ptr<const Snapshot> snapshot) {
  std::lock_guard lock(mutex_);
  store_.publish(std::move(snapshot));
}

void ExpiryWatch::withdraw() {
  std::lock_guard lock(mutex_);
  store_.withdraw();
}

bool ExpiryWatch::check() {
  std::lock_guard lock(mutex_);
  const auto snapshot = store_.current();
  if (!snapshot || snapshot->svids.empty()) {
    return false;
  }
  const auto now = clock_.now();
  for (const auto& svid : snapshot->svids) {
    const auto end = svid->not_after();
    if (now >= end) {
      spdlog::error("identity: SVID {} from {} expired at {} without renewal; refusing new "
                    "connections until the source delivers a fresh one",
                    svid->id.str(), snapshot->source, utc_text(end));
      store_.withdraw();
      warned_.reset();
      return true;
    }
  }
  if (warned_ == snapshot) {
    return false;
  }
  for (const auto& svid : snapshot->svids) {
    const auto end = svid->not_after();
    const auto lifetime = end - not_before(*svid);
    const auto warn_within =
        std::chrono::duration_cast<Clock::duration>(lifetime * options_.warn_fraction);
    if (end - now < warn_within) {
      spdlog::warn("identity: SVID {} from {} expires in {} (at {}) and has not been renewed; "
                   "is the identity source (SPIRE agent) reachable?",
                   svid->id.str(), snapshot->source, duration_text(end - now), utc_text(end));
      warned_ = snapshot;
      return false;
    }
  }
  return false;
}

}  // namespace spiffe_tunnel::identity
