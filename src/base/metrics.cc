#include "spiffe_tunnel/base/metrics.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>

namespace spiffe_tunnel::base {
namespace {

// Text format 0.0.4: label values escape \, " and newline; HELP text escapes \ and newline.
std::string escape(const std::string& v, bool quote) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || (quote && c == '"')) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string render_labels(const Labels& labels) {
  if (labels.empty()) {
    return "";
  }
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) {
      out += ',';
    }
    out += labels[i].first + "=\"" + escape(labels[i].second, true) + "\"";
  }
  return out + "}";
}

// The shortest text that reads back as the same double ("0.005", "86400", "+Inf").
std::string format_double(double v) {
  if (std::isinf(v)) {
    return v > 0 ? "+Inf" : "-Inf";
  }
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

// `labels` ("" or "{…}") with one more label appended.
std::string with_label(const std::string& labels, const std::string& name,
                       const std::string& value) {
  const std::string extra = name + "=\"" + value + "\"";
  if (labels.empty()) {
    return "{" + extra + "}";
  }
  return labels.substr(0, labels.size() - 1) + "," + extra + "}";
}

const char* type_name(bool counter, bool gauge) {
  return counter ? "counter" : gauge ? "gauge" : "histogram";
}

}  // namespace

std::vector<double> short_duration_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

std::vector<double> session_duration_buckets() {
  return {0.01, 0.1, 1, 10, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400};
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  assert(std::is_sorted(bounds_.begin(), bounds_.end()));
}

void Histogram::observe(double value) {
  // Buckets are few (about a dozen): a linear scan beats a binary search here.
  std::size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) {
    ++i;
  }
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_nano_.fetch_add(static_cast<int64_t>(std::llround(value * 1e9)), std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::cumulative_counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  uint64_t total = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    out[i] = total;
  }
  return out;
}

double Histogram::sum() const {
  return static_cast<double>(sum_nano_.load(std::memory_order_relaxed)) / 1e9;
}

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name, const std::string& help,
                                                 Type type) {
  auto [it, added] = families_.try_emplace(name);
  Family& f = it->second;
  if (added) {
    f.type = type;
  }
  assert(f.type == type);  // one name, one type
  if (f.help.empty()) {
    f.help = help;
  }
  return f;
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                  const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Type::kCounter).counters[render_labels(labels)];
  if (!slot) {
    slot = std::make_unique<Counter>();
  }
  return *slot;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                              const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Type::kGauge).gauges[render_labels(labels)];
  if (!slot) {
    slot = std::make_unique<Gauge>();
  }
  return *slot;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      const std::vector<double>& bounds, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, help, Type::kHistogram).histograms[render_labels(labels)];
  if (!slot) {
    slot = std::make_unique<Histogram>(bounds);
  }
  return *slot;
}

void MetricsRegistry::info(const std::string& name, const std::string& help,
                           const Labels& labels) {
  gauge(name, help, labels).set(1);
}

void MetricsRegistry::render_histogram(const std::string& name, const std::string& labels,
                                       const Histogram& h, std::string& out) {
  const std::vector<uint64_t> counts = h.cumulative_counts();
  for (std::size_t i = 0; i < counts.size(); ++i) {
    const double le = i < h.bounds().size() ? h.bounds()[i] : INFINITY;
    out += name + "_bucket" + with_label(labels, "le", format_double(le)) + " " +
           std::to_string(counts[i]) + "\n";
  }
  out += name + "_sum" + labels + " " + format_double(h.sum()) + "\n";
  // The +Inf bucket is the count: both come from the same read, so they always agree.
  out += name + "_count" + labels + " " + std::to_string(counts.back()) + "\n";
}

std::string MetricsRegistry::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + escape(f.help, false) + "\n";
    out += "# TYPE " + name + " " +
           type_name(f.type == Type::kCounter, f.type == Type::kGauge) + "\n";
    for (const auto& [labels, c] : f.counters) {
      out += name + labels + " " + std::to_string(c->value()) + "\n";
    }
    for (const auto& [labels, g] : f.gauges) {
      out += name + labels + " " + std::to_string(g->value()) + "\n";
    }
    for (const auto& [labels, h] : f.histograms) {
      render_histogram(name, labels, *h, out);
    }
  }
  return out;
}

}  // namespace spiffe_tunnel::base
