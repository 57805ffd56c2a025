#include "spiffe_tunnel/tunnel/tunnel.h"

#include <spdlog/spdlog.h>

#include <asio/post.hpp>

#include <future>

#include "session.h"
#include "spiffe_tunnel/base/log.h"
#include "tunnel/handshake_limiter.h"
#include "tunnel/carrier_pool.h"
#include "tunnel/listener.h"
#include "tunnel/socket_names.h"

namespace spiffe_tunnel::tunnel {
namespace {

// How long drain() waits for sessions it closed to go: closing is a post to each session's
// thread and a few syscalls, so this only bounds a wedged thread.
constexpr std::chrono::seconds kCloseGrace{2};

std::shared_ptr<TunnelContext> make_context(TunnelOptions o,
                                                  std::unique_ptr<tls::ContextProvider> tls,
                                                  base::MetricsRegistry& metrics) {
  auto c = std::make_shared<TunnelContext>();
  c->name = o.name;
  c->mode = tls->options().role;
  c->limits = o.limits;
  if (const auto* tcp = std::get_if<TcpAddress>(&o.target)) {
    c->target = Target::of(tcp->host, std::to_string(tcp->port));
  } else {
    c->target = Target::unix_socket(std::get<UnixAddress>(o.target).path);
  }
  c->opa = std::move(o.opa);
  c->proxy_protocol = o.proxy_protocol;
  c->tls = std::move(tls);
  c->metrics = std::make_shared<TunnelMetrics>(metrics, o.name);
  c->log_sessions = o.log_sessions;
  c->mux = o.mux;
  return c;
}

// The per-source key of a peer (empty for unix sockets and peers already gone).
std::string source_key(base::StreamSocket& socket) {
  asio::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  if (ec) {
    return {};
  }
  const auto ip = ip_endpoint(remote);
  return ip ? HandshakeLimiter::source_key(ip->address()) : std::string();
}

}  // namespace

Tunnel::Tunnel(std::shared_ptr<const TunnelContext> context, IoPool& pool)
    : name_(context->name),
      pool_(pool),
      accept_backoff_(pool.at(0)),
      handshakes_(std::make_shared<HandshakeLimiter>()),
      context_(std::move(context)) {}

Tunnel::~Tunnel() {
  if (const auto c = context(); c->carriers) {
    c->carriers->detach();
  }
  stop();
}

base::Result<std::unique_ptr<Tunnel>> Tunnel::create(TunnelOptions options,
                                                     std::unique_ptr<tls::ContextProvider> tls,
                                                     IoPool& pool,
                                                     base::MetricsRegistry& metrics) {
  const SessionLimits& l = options.limits;
  if (l.handshake_timeout.count() <= 0 || l.connect_timeout.count() <= 0 ||
      l.max_connections == 0 || l.buffer_size == 0) {
    return base::make_error("tunnel \"" + options.name +
                            "\": session limits not set (timeouts, max_connections, buffer_size)");
  }
  if (options.proxy_protocol != ProxyProtocol::kOff && tls->options().role != tls::Role::kServer) {
    return base::make_error("tunnel \"" + options.name +
                            "\": a PROXY protocol header is sent by server tunnels only");
  }
  // ktls: on where the listener is the TLS side: an inherited socket must then be TCP (a
  // unix: path was refused by the configuration already).
  const bool require_tcp = tls->options().role == tls::Role::kServer &&
                           tls->options().ktls == tls::KtlsMode::kOn;
  const ListenAddress listen = options.listen;
  std::shared_ptr<Listener> handed_over = std::move(options.listener);
  auto context = make_context(std::move(options), std::move(tls), metrics);
  std::unique_ptr<Tunnel> t(new Tunnel(context, pool));
  if (context->mux && context->mode == tls::Role::kClient) {
    // Set before any thread sees the context; the pool is detached in ~Tunnel.
    context->carriers = std::make_shared<CarrierPool>(
        context->mux->connections,
        [raw = t.get()](const asio::any_io_executor& ex) { return raw->start_carrier(ex); });
  }
  if (handed_over) {
    t->listener_ = std::move(handed_over);
    return t;
  }
  auto listener =
      Listener::open(pool.at(0), listen, "tunnel \"" + t->name_ + "\": listen", require_tcp);
  if (!listener) {
    return listener.error();
  }
  t->listener_ = std::move(*listener);
  return t;
}

std::shared_ptr<const TunnelContext> Tunnel::context() const {
  std::lock_guard lock(context_mutex_);
  return context_;
}

void Tunnel::swap_context(std::shared_ptr<const TunnelContext> next) {
  std::lock_guard lock(context_mutex_);
  context_ = std::move(next);
}

void Tunnel::start() {
  started_ = true;
  const auto c = context();
  const std::string target = c->target.str();
  const std::string_view proxy = c->proxy_protocol == ProxyProtocol::kV2 ? "v2" : "";
  const base::LogField who[] = {{"tunnel", name_}, {"mode", c->mode_name()}};
  const base::LogField facts[] = {{"listen", listener_->description(), base::TextStyle::kBare},
                                  {"target", target, base::TextStyle::kLabelled},
                                  {"proxy_protocol", proxy, base::TextStyle::kKeyValue}};
  base::log_line(spdlog::level::info, {who, "listening on", facts});
  asio::post(listener_->acceptor().get_executor(), [this] { accept_next(); });
}

std::shared_ptr<Listener> Tunnel::release_listener() {
  std::promise<std::shared_ptr<Listener>> released;
  asio::post(listener_->acceptor().get_executor(), [this, &released] {
    // On the acceptor's thread: an accept that completed before this runs still starts its
    // session in this version; the pending one is cancelled.
    std::shared_ptr<Listener> handed;
    if (!stopped_.exchange(true)) {
      accept_backoff_.cancel();
      asio::error_code ignored;
      listener_->acceptor().cancel(ignored);
      handed = listener_;
    }
    released.set_value(std::move(handed));
  });
  std::shared_ptr<Listener> handed = released.get_future().get();
  // The next version opens its own carrying connections: these end with their last stream.
  for (const auto& s : live_sessions()) {
    s->retire();
  }
  return handed;
}

void Tunnel::update_policy(std::unique_ptr<tls::ContextProvider> tls,
                           std::shared_ptr<policy::OpaClient> opa) {
  auto next = std::make_shared<TunnelContext>(*context());
  next->tls = std::move(tls);
  next->opa = std::move(opa);
  std::shared_ptr<const TunnelContext> shared = std::move(next);
  swap_context(shared);
  for (const auto& s : live_sessions()) {
    s->recheck(shared);
  }
}

void Tunnel::recheck_identity() {
  for (const auto& s : live_sessions()) {
    s->recheck_identity();
  }
}

void Tunnel::set_log_sessions(bool on) {
  auto next = std::make_shared<TunnelContext>(*context());
  next->log_sessions = on;
  swap_context(std::move(next));
}

std::vector<std::shared_ptr<Session>> Tunnel::live_sessions() {
  std::vector<std::shared_ptr<Session>> live;
  std::lock_guard lock(sessions_mutex_);
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (auto s = it->second.lock()) {
      live.push_back(std::move(s));
      ++it;
    } else {
      it = sessions_.erase(it);
    }
  }
  return live;
}

void Tunnel::accept_next() {
  if (stopped_) {
    return;
  }
  // Accept straight onto the io_context that will run the session.
  listener_->acceptor().async_accept(pool_.next(), [this](asio::error_code ec,
                                                           base::StreamSocket s) {
    if (!ec) {
      accept_delay_.reset();
      start_session(std::move(s));
    } else if (ec == asio::error::operation_aborted || stopped_) {
      return;
    } else {
      pause_accepting(ec);
      return;
    }
    accept_next();
  });
}

// EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable, so accepting again at once would
// spin. Pause (10 ms doubling to 1 s), then accept again; sessions that end meanwhile free
// descriptors. The warning is rate limited like rejections.
void Tunnel::pause_accepting(const asio::error_code& ec) {
  const auto delay = accept_delay_.next();
  const std::string detail =
      ec.message() + "; pausing accepts for " + std::to_string(delay.count()) + " ms";
  const base::LogField who[] = {{"tunnel", name_}};
  const base::LogField facts[] = {{"detail", detail, base::TextStyle::kColon}};
  context()->metrics->log_rejection("accept_error", {who, "accept failed", facts});
  accept_backoff_.expires_after(delay);
  accept_backoff_.async_wait([this](asio::error_code wec) {
    if (!wec) {
      accept_next();
    }
  });
}

void Tunnel::refuse(base::StreamSocket& socket, const TunnelContext& c, std::string_view reason,
                    const std::string& detail) {
  c.metrics->reject(reason);
  const std::string from = peer_name(socket);
  const base::LogField who[] = {{"tunnel", name_}, {"from", from}};
  const base::LogField facts[] = {{"detail", detail, base::TextStyle::kColon},
                                  {"reason", reason, base::TextStyle::kParens}};
  c.metrics->log_rejection(reason, {who, "refusing connection", facts});
  asio::error_code ignored;
  socket.close(ignored);
}

void Tunnel::start_session(base::StreamSocket socket) {
  auto c = context();
  TunnelMetrics& m = *c->metrics;
  m.accepted.inc();
  // Connections still in their handshake hold a handshake slot and do not count here.
  const std::size_t held = drain_.held();
  const std::size_t in_handshake = handshakes_->in_flight();
  const std::size_t established = held > in_handshake ? held - in_handshake : 0;
  if (established >= c->limits.max_connections) {
    refuse(socket, *c, "max_connections", std::to_string(established) + " sessions open");
    return;
  }
  const std::string source = source_key(socket);
  // The per-source limit is for unauthenticated remote peers. A client tunnel's connections come
  // from local applications (one address, in bursts: a pool opening, a batch fanning out), which
  // only the tunnel-wide limit bounds.
  const std::size_t per_source =
      c->mode == tls::Role::kServer ? c->limits.max_handshakes_per_source : SIZE_MAX;
  auto admitted = handshakes_->try_acquire(
      source, c->limits.max_handshakes == 0 ? SIZE_MAX : c->limits.max_handshakes, per_source);
  if (!admitted.slot) {
    const bool global = admitted.refused == "global";
    refuse(socket, *c, "handshake_limit",
           global ? std::to_string(handshakes_->in_flight()) + " handshakes in flight"
                  : std::to_string(handshakes_->in_flight(source)) +
                        " handshakes in flight from this source");
    return;
  }
  auto session = std::make_shared<Session>(std::move(c), next_session_id_++, std::move(socket));
  session->hold_handshake_slot(std::move(*admitted.slot));
  {
    // Registered before the token is taken, so that close_sessions() cannot miss a session
    // that holds one. Ended sessions leave expired entries; they are swept once they outnumber
    // the live ones.
    std::lock_guard lock(sessions_mutex_);
    if (sessions_.size() >= 64 && sessions_.size() > 2 * drain_.held()) {
      std::erase_if(sessions_, [](const auto& e) { return e.second.expired(); });
    }
    sessions_.emplace(session->id(), session);
  }
  auto token = drain_.acquire();
  if (!token) {
    return;  // draining: the session is dropped with its socket, never started
  }
  m.active.add(1);
  session->start(std::move(*token));
}

bool Tunnel::start_carrier(const asio::any_io_executor& ex) {
  if (stopped_) {
    return false;
  }
  auto session = std::make_shared<Session>(context(), next_session_id_++, base::StreamSocket(ex));
  session->set_carrier();
  {
    std::lock_guard lock(sessions_mutex_);
    sessions_.emplace(session->id(), session);
  }
  auto token = drain_.acquire();
  if (!token) {
    return false;
  }
  context()->metrics->active.add(1);
  session->start(std::move(*token));
  return true;
}

void Tunnel::stop() {
  drain_.begin();
  if (stopped_.exchange(true) || !listener_) {
    return;  // stopped already, or create() failed before a listener existed
  }
  // Carrying connections take no new streams and end with their last one (GOAWAY).
  for (const auto& s : live_sessions()) {
    s->retire();
  }
  // New clients of a unix socket find no file rather than a socket nobody accepts on.
  listener_->remove_socket_file();
  if (!started_) {
    // Never accepted (e.g. built for a reload that was then rejected): nothing runs on the
    // acceptor's thread for this tunnel, and the tunnel may be destroyed right after this.
    asio::error_code ignored;
    listener_->acceptor().close(ignored);
    return;
  }
  asio::post(listener_->acceptor().get_executor(), [this] {
    asio::error_code ignored;
    accept_backoff_.cancel();
    listener_->acceptor().close(ignored);
  });
}

asio::ip::tcp::endpoint Tunnel::local_endpoint() const {
  return listener_->tcp_endpoint().value_or(asio::ip::tcp::endpoint());
}

const std::string& Tunnel::listen_address() const { return listener_->description(); }

void Tunnel::close_sessions() {
  for (const auto& s : live_sessions()) {
    s->abort("tunnel draining", "draining");
  }
}

bool Tunnel::wait_sessions_ended(std::chrono::steady_clock::time_point deadline) const {
  return drain_.wait_released(deadline);
}

std::size_t Tunnel::drain(std::chrono::steady_clock::time_point deadline) {
  stop();
  if (drain_.wait_released(deadline)) {
    return 0;
  }
  const std::size_t open = drain_.held();
  const std::string detail = "closing " + std::to_string(open) + " open session(s)";
  const base::LogField who[] = {{"tunnel", name_}};
  const base::LogField facts[] = {{"detail", detail, base::TextStyle::kColon}};
  base::log_line(spdlog::level::warn, {who, "drain timeout", facts});
  close_sessions();
  drain_.wait_released(std::chrono::steady_clock::now() + kCloseGrace);
  return open;
}

bool Tunnel::ready() const { return context()->tls->current().ok(); }

std::string Tunnel::readiness_detail() const {
  auto c = context()->tls->current();
  return c ? "ready" : c.error().message;
}

}  // namespace spiffe_tunnel::tunnel
