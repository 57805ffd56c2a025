#include "session.h"

#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include <vector>

#include "spiffe_tunnel/pump/pump.h"
#include "tunnel/socket_names.h"

namespace spiffe_tunnel::tunnel {

Session::Session(std::shared_ptr<const TunnelContext> context, uint64_t id,
                 base::StreamSocket downstream)
    : context_(std::move(context)),
      id_(id),
      peer_address_(peer_name(downstream)),
      accepted_(std::move(downstream)),
      target_(accepted_.get_executor()),
      deadline_(accepted_.get_executor()),
      idle_timer_(accepted_.get_executor()),
      started_(std::chrono::steady_clock::now()),
      last_activity_(started_) {}

std::string Session::prefix() const {
  return "tunnel=" + context_->name + " session=" + std::to_string(id_) + " from=" + peer_address_;
}

void Session::start(base::DrainToken token) {
  token_ = std::move(token);
  asio::co_spawn(accepted_.get_executor(), [self = shared_from_this()] { return self->run(); },
                 asio::detached);
}

void Session::abort(std::string reason) {
  asio::post(accepted_.get_executor(), [self = shared_from_this(), reason = std::move(reason)] {
    if (!self->finished_) {
      self->timed_out_ = reason;
      self->close_all();
    }
  });
}

void Session::close_all() {
  asio::error_code ignored;
  accepted_.close(ignored);
  target_.close(ignored);
  if (handshake_) {
    handshake_->close();
  }
  if (resolver_) {
    resolver_->cancel();
  }
  if (tls_) {
    tls_->close();
  }
  if (plain_) {
    plain_->close();
  }
}

void Session::arm_deadline(std::chrono::milliseconds after, std::string what) {
  deadline_.expires_after(after);
  deadline_.async_wait([self = shared_from_this(), what = std::move(what)](asio::error_code ec) {
    if (!ec && !self->finished_) {
      self->timed_out_ = what;
      self->close_all();
    }
  });
}

void Session::disarm_deadline() { deadline_.cancel(); }

void Session::arm_idle() {
  const auto idle = context_->limits.idle_timeout;
  if (idle.count() == 0) {
    return;
  }
  idle_timer_.expires_at(last_activity_ + idle);
  idle_timer_.async_wait([self = shared_from_this(), idle](asio::error_code ec) {
    if (ec || self->finished_) {
      return;
    }
    if (std::chrono::steady_clock::now() - self->last_activity_ >= idle) {
      self->timed_out_ = "idle timeout (" + std::to_string(idle.count() / 1000) + "s)";
      self->close_all();
    } else {
      self->arm_idle();
    }
  });
}

void Session::reject(std::string_view reason_label, const std::string& detail) {
  context_->metrics->reject(reason_label);
  spdlog::warn("{} rejected reason={}: {}", prefix(), reason_label, detail);
}

asio::awaitable<bool> Session::handshake(base::StreamSocket socket) {
  auto ctx = context_->tls->current();
  if (!ctx) {
    reject("not_ready", "refusing connection: " + ctx.error().message);
    co_return false;
  }
  auto made = tls::Handshake::create(std::move(socket), *ctx);
  if (!made) {
    reject("internal", made.error().message);
    co_return false;
  }
  handshake_ = std::move(*made);
  arm_deadline(context_->limits.handshake_timeout, "TLS handshake timeout");
  std::unique_ptr<tls::TlsStream> stream = co_await handshake_->run();
  disarm_deadline();
  if (stream) {
    tls_ = std::move(stream);
    handshake_.reset();
    co_return true;
  }
  if (!timed_out_.empty()) {
    reject("handshake_timeout", timed_out_);
  } else {
    reject(handshake_->failure().reason, handshake_->failure().detail);
  }
  co_return false;
}

asio::awaitable<bool> Session::connect_target() {
  const Target& target = context_->target;
  arm_deadline(context_->limits.connect_timeout, "connect to target timed out");
  asio::error_code ec;
  if (!target.unix_path.empty()) {
    const asio::local::stream_protocol::endpoint path(target.unix_path);
    co_await target_.async_connect(asio::generic::stream_protocol::endpoint(path),
                                   asio::redirect_error(asio::use_awaitable, ec));
  } else {
    co_await connect_tcp_target(ec);
  }
  disarm_deadline();
  if (ec) {
    reject("target_unreachable", "cannot connect to target " + target.str() + ": " +
                                     (timed_out_.empty() ? ec.message() : timed_out_));
    co_return false;
  }
  if (target.unix_path.empty()) {
    target_.set_option(asio::ip::tcp::no_delay(true), ec);
  }
  co_return true;
}

asio::awaitable<void> Session::connect_tcp_target(asio::error_code& ec) {
  const Target& target = context_->target;
  if (target.literal) {
    // An IP target needs no lookup (asio resolves on a helper thread: a hop per connection).
    co_await target_.async_connect(asio::generic::stream_protocol::endpoint(*target.literal),
                                   asio::redirect_error(asio::use_awaitable, ec));
    co_return;
  }
  resolver_.emplace(target_.get_executor());
  auto endpoints = co_await resolver_->async_resolve(target.host, target.port,
                                                     asio::redirect_error(asio::use_awaitable, ec));
  resolver_.reset();
  if (!ec && !timed_out_.empty()) {
    ec = asio::error::operation_aborted;  // the deadline fired while resolving
  }
  if (!ec) {
    std::vector<asio::generic::stream_protocol::endpoint> candidates;
    for (const auto& entry : endpoints) {
      candidates.emplace_back(entry.endpoint());
    }
    co_await asio::async_connect(target_, candidates,
                                 asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<bool> Session::ask_opa() {
  const auto& opa = context_->opa;
  if (!opa) {
    co_return true;
  }
  const tls::PeerOutcome& o = tls_->info().peer;
  // A named input: GCC 12 mishandles temporaries that live across a co_await.
  policy::OpaInput input{context_->name, std::string(context_->mode_name()), *o.peer_id,
                         tls_->info().context->svid().id.str()};
  policy::OpaDecision d = co_await opa->decide(std::move(input));
  if (d.error) {
    reject("opa_unavailable", "peer " + o.peer_id->str() + " refused: " + d.reason);
    co_return false;
  }
  if (!d.allowed) {
    reject("not_authorized", "peer " + o.peer_id->str() + ": " + d.reason);
    co_return false;
  }
  co_return true;
}

// Each step's result is named before it is tested: GCC 12 miscompiles `if (!co_await step())`
// here (the awaited coroutine resumes with a corrupt frame).
asio::awaitable<bool> Session::open_server() {
  const bool verified = co_await handshake(std::move(accepted_));
  if (!verified) {
    co_return false;
  }
  const bool allowed = co_await ask_opa();
  if (!allowed) {
    co_return false;
  }
  const bool connected = co_await connect_target();
  if (!connected) {
    co_return false;
  }
  plain_ = std::make_unique<base::TcpStream>(std::move(target_));
  co_return true;
}

asio::awaitable<bool> Session::open_client() {
  const bool connected = co_await connect_target();
  if (!connected) {
    co_return false;
  }
  plain_ = std::make_unique<base::TcpStream>(std::move(accepted_));
  const bool verified = co_await handshake(std::move(target_));
  if (!verified) {
    co_return false;
  }
  const bool allowed = co_await ask_opa();
  co_return allowed;
}

// The session lines are built only when info is logged: at warn level a busy tunnel formats
// nothing per connection.
void Session::log_opened() const {
  if (!spdlog::should_log(spdlog::level::info)) {
    return;
  }
  const tls::ConnectionInfo& info = tls_->info();
  const tls::PeerOutcome& o = info.peer;
  const auto path = [](bool k) { return k ? "ktls" : "userspace"; };
  spdlog::info("{} opened peer={} ({}) {} {} tls tx={} rx={}{}", prefix(), o.peer_id->str(),
               o.authorized_by, info.protocol, info.cipher, path(tls_->kernel_writes()),
               path(tls_->kernel_reads()),
               info.ktls_detail.empty() ? "" : " (" + info.ktls_detail + ")");
}

void Session::log_closed(const pump::PumpResult& r) const {
  if (!spdlog::should_log(spdlog::level::info)) {
    return;
  }
  const bool server = context_->mode == tls::Role::kServer;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started_)
                      .count();
  std::string why = "closed";
  if (!timed_out_.empty()) {
    why = timed_out_;
  } else if (r.a_to_b.failed_first) {
    why = std::string(server ? "peer→target " : "remote→app ") + r.a_to_b.error;
  } else if (r.b_to_a.failed_first) {
    why = std::string(server ? "target→peer " : "app→remote ") + r.b_to_a.error;
  }
  spdlog::info("{} closed peer={} bytes_from_peer={} bytes_to_peer={} duration_ms={} path={}/{} ({})",
               prefix(), tls_->info().peer.peer_id->str(), r.a_to_b.bytes, r.b_to_a.bytes, ms,
               pump::path_name(r.a_to_b.path), pump::path_name(r.b_to_a.path), why);
}

void Session::count_and_log(const pump::PumpResult& r) const {
  TunnelMetrics& m = *context_->metrics;
  m.bytes_in.inc(r.a_to_b.bytes);
  m.bytes_out.inc(r.b_to_a.bytes);
  (r.a_to_b.path == pump::Path::kSplice ? m.path_splice : m.path_userspace).inc();
  (r.b_to_a.path == pump::Path::kSplice ? m.path_splice : m.path_userspace).inc();
  log_closed(r);
}

asio::awaitable<void> Session::run() {
  asio::error_code ec;
  accepted_.set_option(asio::ip::tcp::no_delay(true), ec);

  const bool server = context_->mode == tls::Role::kServer;
  const bool opened = server ? co_await open_server() : co_await open_client();
  if (opened) {
    context_->metrics->established.inc();
    log_opened();
    pump::PumpOptions po;
    po.buffer_size = context_->limits.buffer_size;
    // No allow_splice decision here: a stream reports kernel_reads/kernel_writes only when the
    // kernel holds its record layer, which `ktls: off` never allows.
    po.on_activity = [this] { last_activity_ = std::chrono::steady_clock::now(); };
    arm_idle();
    // a = TLS side, b = plain side.
    const pump::PumpResult r = co_await pump::pump_both(*tls_, *plain_, po);
    count_and_log(r);
  }
  finished_ = true;
  deadline_.cancel();
  idle_timer_.cancel();
  close_all();
  context_->metrics->active.add(-1);
  token_.release();
}

}  // namespace spiffe_tunnel::tunnel
