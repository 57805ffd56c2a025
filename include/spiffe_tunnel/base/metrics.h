#pragma once
// Counters, gauges and histograms with Prometheus text rendering. Registration (counter(),
// gauge(), histogram(), info()) takes a lock and returns a reference that stays valid for the
// registry's lifetime; updating a metric is one or a few relaxed atomic operations and safe from
// any thread, with no lock. Metric names and labels are public interface: see docs/metrics.md.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace spiffe_tunnel::base {

class Counter {
 public:
  void inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

class Gauge {
 public:
  void add(int64_t n) { v_.fetch_add(n, std::memory_order_relaxed); }
  void set(int64_t n) { v_.store(n, std::memory_order_relaxed); }
  int64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

// Observations counted into fixed buckets (upper bounds, ascending, given at registration), with
// their sum. observe() is lock-free: one relaxed increment of the bucket the value falls in, one
// of the count and one of the sum. The sum is kept in nanounits (value × 1e9, rounded), so it is
// exact for durations in seconds. A scrape that races an observe() may see the count one ahead of
// a bucket; Prometheus tolerates that, and the next scrape is consistent.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);

  void observe(double value);
  void observe(std::chrono::nanoseconds d) { observe(std::chrono::duration<double>(d).count()); }

  const std::vector<double>& bounds() const { return bounds_; }
  // Observations <= bounds()[i], cumulative as Prometheus wants them; index bounds().size() is
  // +Inf (== count()).
  std::vector<uint64_t> cumulative_counts() const;
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative
  std::atomic<uint64_t> count_{0};
  std::atomic<int64_t> sum_nano_{0};
};

// Label set, e.g. {{"tunnel","kafka-in"},{"reason","untrusted_domain"}}. Order is preserved.
using Labels = std::vector<std::pair<std::string, std::string>>;

// Bucket bounds in seconds for durations: a handshake or a decision (1 ms .. 10 s) and a session
// (10 ms .. 1 day).
std::vector<double> short_duration_buckets();
std::vector<double> session_duration_buckets();

class MetricsRegistry {
 public:
  // Returns the counter for (name, labels), creating it on first use. `help` is recorded the
  // first time a name is seen.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // As counter(); `bounds` (ascending, without +Inf) is used when (name, labels) is new.
  Histogram& histogram(const std::string& name, const std::string& help,
                       const std::vector<double>& bounds, const Labels& labels = {});
  // An info-style gauge: `name{labels} 1`, e.g. spiffe_tunnel_build_info{version="…"} 1.
  void info(const std::string& name, const std::string& help, const Labels& labels);

  // Prometheus text exposition format 0.0.4.
  std::string render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    std::string help;
    Type type = Type::kCounter;
    // key: rendered label set ("" or "{a=\"b\"}"); only the map of `type` is used.
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::map<std::string, std::unique_ptr<Histogram>> histograms;
  };
  Family& family(const std::string& name, const std::string& help, Type type);
  static void render_histogram(const std::string& name, const std::string& labels,
                               const Histogram& h, std::string& out);

  mutable std::mutex mutex_;
  std::map<std::string, Family> families_;  // guarded by mutex_
};

}  // namespace spiffe_tunnel::base
