#include "spiffe_tunnel/tunnel/tunnel.h"

#include <spdlog/spdlog.h>

#include <asio/post.hpp>

#include <charconv>

#include "session.h"

namespace spiffe_tunnel::tunnel {

TunnelMetrics::TunnelMetrics(base::MetricsRegistry& r, const std::string& t)
    : accepted(r.counter("spiffe_tunnel_connections_accepted_total",
                         "TCP connections accepted by the tunnel's listener.", {{"tunnel", t}})),
      established(r.counter("spiffe_tunnel_connections_established_total",
                            "Sessions that passed verification and authorization and reached "
                            "the target.",
                            {{"tunnel", t}})),
      active(r.gauge("spiffe_tunnel_sessions_active", "Sessions open now.", {{"tunnel", t}})),
      bytes_in(r.counter("spiffe_tunnel_bytes_total",
                         "Application bytes moved, by direction (from_peer: TLS side to target "
                         "side; to_peer: the reverse).",
                         {{"tunnel", t}, {"direction", "from_peer"}})),
      bytes_out(r.counter("spiffe_tunnel_bytes_total", "",
                          {{"tunnel", t}, {"direction", "to_peer"}})),
      path_userspace(r.counter("spiffe_tunnel_session_directions_total",
                               "Session directions by the data path that moved them.",
                               {{"tunnel", t}, {"path", "userspace"}})),
      path_splice(r.counter("spiffe_tunnel_session_directions_total", "",
                            {{"tunnel", t}, {"path", "ktls+splice"}})),
      registry(r),
      tunnel(t) {}

void TunnelMetrics::reject(std::string_view reason) {
  registry
      .counter("spiffe_tunnel_connections_rejected_total",
               "Connections refused, by reason (see docs/metrics.md).",
               {{"tunnel", tunnel}, {"reason", std::string(reason)}})
      .inc();
}

Tunnel::Tunnel(TunnelOptions options, std::unique_ptr<tls::ContextProvider> tls, IoPool& pool,
               base::MetricsRegistry& metrics)
    : options_(std::move(options)),
      tls_(std::move(tls)),
      pool_(pool),
      metrics_(metrics, options_.name),
      acceptor_(pool.at(0)),
      accept_backoff_(pool.at(0)) {}

Tunnel::~Tunnel() { stop(); }

base::Result<std::unique_ptr<Tunnel>> Tunnel::create(TunnelOptions options,
                                                     std::unique_ptr<tls::ContextProvider> tls,
                                                     IoPool& pool,
                                                     base::MetricsRegistry& metrics) {
  std::unique_ptr<Tunnel> t(new Tunnel(std::move(options), std::move(tls), pool, metrics));
  const TunnelOptions& o = t->options_;
  const std::string where = "tunnel \"" + o.name + "\": listen " + o.listen_host + ":" +
                            std::to_string(o.listen_port);
  asio::error_code ec;
  auto address = asio::ip::make_address(o.listen_host, ec);
  if (ec) {
    return base::make_error(where + ": \"" + o.listen_host + "\" is not an IP address");
  }
  asio::ip::tcp::endpoint ep(address, o.listen_port);
  t->acceptor_.open(ep.protocol(), ec);
  if (!ec) {
    t->acceptor_.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  }
  if (!ec) {
    t->acceptor_.bind(ep, ec);
  }
  if (!ec) {
    t->acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  }
  if (ec) {
    return base::make_error(where + ": " + ec.message());
  }
  t->local_ = t->acceptor_.local_endpoint();
  asio::error_code not_ip;
  const auto target_address = asio::ip::make_address(o.target_host, not_ip);
  uint16_t port = 0;
  const auto* end = o.target_port.data() + o.target_port.size();
  if (!not_ip && std::from_chars(o.target_port.data(), end, port).ptr == end) {
    t->target_ip_ = asio::ip::tcp::endpoint(target_address, port);
  }
  return t;
}

void Tunnel::start() {
  spdlog::info("tunnel={} mode={} listening on {}:{} target {}:{}", options_.name,
               tls_->options().role == tls::Role::kServer ? "server" : "client",
               local_.address().to_string(), local_.port(), options_.target_host,
               options_.target_port);
  asio::post(acceptor_.get_executor(), [this] { accept_next(); });
}

void Tunnel::accept_next() {
  if (stopped_) {
    return;
  }
  // Accept straight onto the io_context that will run the session.
  acceptor_.async_accept(pool_.next(), [this](asio::error_code ec, asio::ip::tcp::socket s) {
    if (ec) {
      if (ec == asio::error::operation_aborted || stopped_) {
        return;
      }
      // EMFILE and friends: retrying at once would spin; pause, then accept again. Sessions
      // that end meanwhile free descriptors.
      spdlog::warn("tunnel={} accept failed: {}; pausing accepts for 100 ms", options_.name,
                   ec.message());
      accept_backoff_.expires_after(std::chrono::milliseconds(100));
      accept_backoff_.async_wait([this](asio::error_code wec) {
        if (!wec) {
          accept_next();
        }
      });
      return;
    } else {
      metrics_.accepted.inc();
      if (static_cast<std::size_t>(metrics_.active.value()) >= options_.max_connections) {
        metrics_.reject("max_connections");
        spdlog::warn("tunnel={} refusing connection: {} sessions open (max_connections)",
                     options_.name, metrics_.active.value());
        asio::error_code ignored;
        s.close(ignored);
      } else {
        const uint64_t id = next_session_id_++;
        auto session = std::make_shared<Session>(*this, id, std::move(s));
        {
          std::lock_guard lock(sessions_mutex_);
          sessions_[id] = session;
        }
        metrics_.active.add(1);
        session->start();
      }
    }
    accept_next();
  });
}

void Tunnel::stop() {
  if (stopped_.exchange(true)) {
    return;
  }
  asio::post(acceptor_.get_executor(), [this] {
    asio::error_code ignored;
    accept_backoff_.cancel();
    acceptor_.close(ignored);
  });
}

void Tunnel::close_sessions() {
  std::lock_guard lock(sessions_mutex_);
  for (auto& [id, weak] : sessions_) {
    if (auto s = weak.lock()) {
      s->abort("daemon shutting down");
    }
  }
}

void Tunnel::on_session_end(uint64_t id) {
  std::lock_guard lock(sessions_mutex_);
  sessions_.erase(id);
}

bool Tunnel::ready() const { return tls_->current().ok(); }

std::string Tunnel::readiness_detail() const {
  auto c = tls_->current();
  return c ? "ready" : c.error().message;
}

std::size_t Tunnel::active_sessions() const {
  return static_cast<std::size_t>(std::max<int64_t>(0, metrics_.active.value()));
}

}  // namespace spiffe_tunnel::tunnel
