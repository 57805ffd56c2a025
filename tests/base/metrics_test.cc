#include "spiffe_tunnel/base/metrics.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <thread>
#include <vector>

using spiffe_tunnel::base::MetricsRegistry;

TEST_CASE("metrics: a counter registered twice is the same counter") {
  MetricsRegistry r;
  auto& a = r.counter("st_x_total", "help", {{"tunnel", "t1"}});
  auto& b = r.counter("st_x_total", "help", {{"tunnel", "t1"}});
  a.inc();
  b.inc(2);
  REQUIRE(&a == &b);
  REQUIRE(a.value() == 3);
}

TEST_CASE("metrics: renders Prometheus text with escaped labels") {
  MetricsRegistry r;
  r.counter("st_x_total", "Things.", {{"tunnel", "a\"b"}}).inc(5);
  r.gauge("st_g", "Level.").set(-2);
  const std::string text = r.render();
  REQUIRE(text.find("# TYPE st_x_total counter\n") != std::string::npos);
  REQUIRE(text.find("st_x_total{tunnel=\"a\\\"b\"} 5\n") != std::string::npos);
  REQUIRE(text.find("# TYPE st_g gauge\nst_g -2\n") != std::string::npos);
}

TEST_CASE("metrics: a histogram renders cumulative buckets, +Inf, sum and count") {
  MetricsRegistry r;
  auto& h = r.histogram("st_d_seconds", "Durations.", {0.001, 0.5, 10}, {{"tunnel", "t"}});
  h.observe(0.001);  // on a bound: counts in that bucket (le is "less or equal")
  h.observe(0.2);
  h.observe(std::chrono::milliseconds(300));
  h.observe(99.0);
  const std::string text = r.render();
  REQUIRE(text.find("# TYPE st_d_seconds histogram\n") != std::string::npos);
  REQUIRE(text.find("st_d_seconds_bucket{tunnel=\"t\",le=\"0.001\"} 1\n"
                    "st_d_seconds_bucket{tunnel=\"t\",le=\"0.5\"} 3\n"
                    "st_d_seconds_bucket{tunnel=\"t\",le=\"10\"} 3\n"
                    "st_d_seconds_bucket{tunnel=\"t\",le=\"+Inf\"} 4\n"
                    "st_d_seconds_sum{tunnel=\"t\"} 99.501\n"
                    "st_d_seconds_count{tunnel=\"t\"} 4\n") != std::string::npos);
}

TEST_CASE("metrics: an unlabelled histogram gets le as its only label") {
  MetricsRegistry r;
  r.histogram("st_h", "H.", {1}).observe(2);
  const std::string text = r.render();
  REQUIRE(text.find("st_h_bucket{le=\"1\"} 0\nst_h_bucket{le=\"+Inf\"} 1\nst_h_sum 2\n"
                    "st_h_count 1\n") != std::string::npos);
}

TEST_CASE("metrics: label values escape backslash, quote and newline; help escapes too") {
  MetricsRegistry r;
  r.counter("st_e_total", "Line one\nback\\slash \"quoted\"", {{"v", "a\\b\"c\nd"}}).inc();
  const std::string text = r.render();
  REQUIRE(text.find("# HELP st_e_total Line one\\nback\\\\slash \"quoted\"\n") !=
          std::string::npos);
  REQUIRE(text.find("st_e_total{v=\"a\\\\b\\\"c\\nd\"} 1\n") != std::string::npos);
}

TEST_CASE("metrics: an info gauge is 1 with its labels") {
  MetricsRegistry r;
  r.info("st_build_info", "Build.", {{"version", "1.2.3"}, {"openssl", "OpenSSL 3"}});
  REQUIRE(r.render().find("st_build_info{version=\"1.2.3\",openssl=\"OpenSSL 3\"} 1\n") !=
          std::string::npos);
}

TEST_CASE("metrics: a gauge first registered without help keeps its type") {
  MetricsRegistry r;
  r.gauge("st_g2", "").set(3);
  r.gauge("st_g2", "Later help.", {{"a", "b"}}).set(4);
  const std::string text = r.render();
  REQUIRE(text.find("# HELP st_g2 Later help.\n# TYPE st_g2 gauge\n") != std::string::npos);
}

TEST_CASE("metrics: histograms count concurrent observations exactly") {
  MetricsRegistry r;
  auto& h = r.histogram("st_c", "C.", spiffe_tunnel::base::short_duration_buckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h] {
      for (int i = 0; i < 10000; ++i) {
        h.observe(0.003);
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  REQUIRE(h.count() == 40000);
  REQUIRE(h.cumulative_counts()[2] == 40000);  // le=0.005
  REQUIRE(h.sum() == Approx(120.0));
}
