#include "spiffe_tunnel/base/metrics.h"

#include <catch2/catch.hpp>

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
