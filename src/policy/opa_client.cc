#include "spiffe_tunnel/policy/opa_client.h"

#include <nlohmann/json.hpp>

#include <asio/connect.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

namespace spiffe_tunnel::policy {
namespace {

constexpr std::size_t kMaxResponse = 64 * 1024;

}  // namespace

// Every field of the input the policy sees is part of the key: a decision for the SVID a tunnel
// presented before a rotation, or for the other mode, is not an answer for this one.
std::string decision_cache_key(const OpaInput& in) {
  return in.tunnel + '\n' + in.mode + '\n' + in.local_id + '\n' + in.peer.str();
}

std::string OpaOptions::url() const {
  const bool v6 = host.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port) + path;
}

OpaMetrics::OpaMetrics(base::MetricsRegistry& r, const std::string& tunnel)
    : allow(r.counter("spiffe_tunnel_opa_decisions_total",
                      "OPA decisions by outcome (see docs/metrics.md).",
                      {{"tunnel", tunnel}, {"outcome", "allow"}})),
      deny(r.counter("spiffe_tunnel_opa_decisions_total", "",
                     {{"tunnel", tunnel}, {"outcome", "deny"}})),
      error(r.counter("spiffe_tunnel_opa_decisions_total", "",
                      {{"tunnel", tunnel}, {"outcome", "error"}})),
      timeout(r.counter("spiffe_tunnel_opa_decisions_total", "",
                        {{"tunnel", tunnel}, {"outcome", "timeout"}})),
      cached_allow(r.counter("spiffe_tunnel_opa_decisions_total", "",
                             {{"tunnel", tunnel}, {"outcome", "cached_allow"}})),
      cached_deny(r.counter("spiffe_tunnel_opa_decisions_total", "",
                            {{"tunnel", tunnel}, {"outcome", "cached_deny"}})),
      latency(r.histogram("spiffe_tunnel_opa_decision_duration_seconds",
                          "Time from sending a query to OPA to its decision (or error); cache "
                          "hits are not included.",
                          base::short_duration_buckets(), {{"tunnel", tunnel}})) {}

OpaClient::OpaClient(OpaOptions options, std::shared_ptr<OpaMetrics> metrics)
    : options_(std::move(options)),
      port_(std::to_string(options_.port)),
      metrics_(std::move(metrics)) {
  if (!metrics_) {
    unused_registry_ = std::make_unique<base::MetricsRegistry>();
    metrics_ = std::make_shared<OpaMetrics>(*unused_registry_, "");
  }
}

void OpaClient::count(const OpaDecision& d, std::chrono::steady_clock::duration took) {
  metrics_->latency.observe(took);
  if (d.timed_out) {
    metrics_->timeout.inc();
  } else if (d.error) {
    metrics_->error.inc();
  } else {
    (d.allowed ? metrics_->allow : metrics_->deny).inc();
  }
}

asio::awaitable<OpaDecision> OpaClient::decide(OpaInput input) {
  const std::string key = decision_cache_key(input);
  const auto now = std::chrono::steady_clock::now();
  if (options_.cache_ttl.count() > 0) {
    std::lock_guard lock(mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end() && it->second.expires > now) {
      (it->second.allowed ? metrics_->cached_allow : metrics_->cached_deny).inc();
      co_return OpaDecision{it->second.allowed, false,
                            it->second.allowed ? "OPA allowed (cached)" : "OPA denied (cached)"};
    }
  }
  OpaDecision d = co_await query(input);
  count(d, std::chrono::steady_clock::now() - now);
  if (!d.error && options_.cache_ttl.count() > 0) {
    std::lock_guard lock(mutex_);
    if (cache_.size() >= options_.cache_entries) {
      cache_.clear();  // simple bound: decisions are cheap to re-fetch
    }
    cache_[key] = Entry{d.allowed, now + options_.cache_ttl};
  }
  co_return d;
}

asio::awaitable<OpaDecision> OpaClient::query(const OpaInput& input) {
  using namespace asio::experimental::awaitable_operators;
  auto executor = co_await asio::this_coro::executor;
  nlohmann::json body = {{"input",
                          {{"tunnel", input.tunnel},
                           {"mode", input.mode},
                           {"peer_spiffe_id", input.peer.str()},
                           {"peer_trust_domain", input.peer.trust_domain().name()},
                           {"peer_path", input.peer.path()},
                           {"local_spiffe_id", input.local_id}}}};
  const std::string payload = body.dump();
  const std::string request = "POST " + options_.path + " HTTP/1.1\r\nHost: " + options_.host + ":" + port_ +
                              "\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(payload.size()) + "\r\nConnection: close\r\n\r\n" +
                              payload;

  asio::ip::tcp::socket socket(executor);
  std::string response;
  asio::error_code ec;
  auto exchange = [&]() -> asio::awaitable<void> {
    asio::ip::tcp::resolver resolver(executor);
    auto endpoints = co_await resolver.async_resolve(options_.host, port_,
                                                     asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      co_return;
    }
    co_await asio::async_connect(socket, endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      co_return;
    }
    co_await asio::async_write(socket, asio::buffer(request),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      co_return;
    }
    char buf[4096];
    for (;;) {
      asio::error_code rec;
      const std::size_t n = co_await socket.async_read_some(
          asio::buffer(buf), asio::redirect_error(asio::use_awaitable, rec));
      response.append(buf, n);
      if (rec || response.size() > kMaxResponse) {
        break;
      }
    }
  };
  asio::steady_timer timer(executor);
  timer.expires_after(options_.timeout);
  auto which = co_await (exchange() || timer.async_wait(asio::use_awaitable));
  if (which.index() == 1) {
    co_return OpaDecision{false, true,
                          "OPA at " + options_.url() + " did not answer within " +
                              std::to_string(options_.timeout.count()) + " ms",
                          true};
  }
  if (ec) {
    co_return OpaDecision{false, true, "OPA at " + options_.url() + " unreachable: " + ec.message()};
  }
  const size_t status_end = response.find("\r\n");
  const size_t head_end = response.find("\r\n\r\n");
  if (status_end == std::string::npos || head_end == std::string::npos) {
    co_return OpaDecision{false, true, "OPA answered something that is not HTTP"};
  }
  const std::string status = response.substr(0, status_end);
  if (status.find(" 200 ") == std::string::npos) {
    co_return OpaDecision{false, true, "OPA answered \"" + status + "\""};
  }
  // OPA answers with Content-Length; chunked encoding is not used for data API responses.
  auto json = nlohmann::json::parse(response.substr(head_end + 4), nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    co_return OpaDecision{false, true, "OPA answered invalid JSON"};
  }
  if (!json.contains("result")) {
    co_return OpaDecision{false, false, "OPA policy rule is undefined for this input (denied)"};
  }
  const bool allowed = json["result"].is_boolean() && json["result"].get<bool>();
  co_return OpaDecision{allowed, false, allowed ? "OPA allowed" : "OPA denied"};
}

}  // namespace spiffe_tunnel::policy
