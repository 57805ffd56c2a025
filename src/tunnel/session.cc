#include "session.h"

#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/post.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include "spiffe_tunnel/base/log.h"
#include "spiffe_tunnel/pump/pump.h"

namespace spiffe_tunnel::tunnel {
namespace {

std::string endpoint_string(const asio::ip::tcp::socket& s) {
  asio::error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) {
    return "?";
  }
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

}  // namespace

Session::Session(std::shared_ptr<const TunnelContext> context, uint64_t id,
                 asio::ip::tcp::socket downstream)
    : context_(std::move(context)),
      id_(id),
      peer_address_(endpoint_string(downstream)),
      accepted_(std::move(downstream)),
      target_(accepted_.get_executor()),
      deadline_(accepted_.get_executor()),
      idle_timer_(accepted_.get_executor()),
      started_(std::chrono::steady_clock::now()),
      last_activity_(started_) {}

std::array<base::LogField, 3> Session::log_context() const {
  return {{{"tunnel", context_->name}, {"session", id_}, {"from", peer_address_}}};
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
      self->end_reason_ = "aborted";
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
      self->end_reason_ = "idle_timeout";
      self->close_all();
    } else {
      self->arm_idle();
    }
  });
}

void Session::reject(std::string_view reason_label, const std::string& detail,
                     std::string_view peer_id) {
  context_->metrics->reject(reason_label);
  const auto who = log_context();
  // The detail names the peer for the text line; JSON and journald also get it as peer_id.
  const base::LogField facts[] = {{"reason", reason_label},
                                  {"peer_id", peer_id, base::TextStyle::kHidden},
                                  {"detail", detail, base::TextStyle::kColon}};
  base::log_line(spdlog::level::warn, {who, "rejected", facts});
}

asio::awaitable<bool> Session::handshake(asio::ip::tcp::socket socket) {
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
  if (target.literal) {
    // An IP target needs no lookup (asio resolves on a helper thread: a hop per connection).
    co_await target_.async_connect(*target.literal, asio::redirect_error(asio::use_awaitable, ec));
  } else {
    resolver_.emplace(target_.get_executor());
    auto endpoints = co_await resolver_->async_resolve(
        target.host, target.port, asio::redirect_error(asio::use_awaitable, ec));
    resolver_.reset();
    if (!ec && !timed_out_.empty()) {
      ec = asio::error::operation_aborted;  // the deadline fired while resolving
    }
    if (!ec) {
      co_await asio::async_connect(target_, endpoints,
                                   asio::redirect_error(asio::use_awaitable, ec));
    }
  }
  disarm_deadline();
  if (ec) {
    reject("target_unreachable", "cannot connect to target " + target.str() + ": " +
                                     (timed_out_.empty() ? ec.message() : timed_out_));
    co_return false;
  }
  target_.set_option(asio::ip::tcp::no_delay(true), ec);
  co_return true;
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
  const std::string peer = o.peer_id->str();
  if (d.error) {
    reject("opa_unavailable", "peer " + peer + " refused: " + d.reason, peer);
    co_return false;
  }
  if (!d.allowed) {
    reject("not_authorized", "peer " + peer + ": " + d.reason, peer);
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

// The session lines are built only when they are logged: at warn level, or with log_sessions
// off, a busy tunnel formats nothing per connection.
bool Session::logs_sessions() const {
  return context_->log_sessions && spdlog::should_log(spdlog::level::info);
}

void Session::log_opened() const {
  if (!logs_sessions()) {
    return;
  }
  using base::TextStyle;
  const tls::ConnectionInfo& info = tls_->info();
  const tls::PeerOutcome& o = info.peer;
  const auto path = [](bool k) { return k ? "ktls" : "userspace"; };
  const std::string peer = o.peer_id->str();
  const auto who = log_context();
  const base::LogField facts[] = {{"peer_id", peer, TextStyle::kKeyValue, "peer"},
                                  {"authorized_by", o.authorized_by, TextStyle::kParens},
                                  {"tls_version", info.protocol, TextStyle::kBare},
                                  {"cipher", info.cipher, TextStyle::kBare},
                                  {"tls_tx", path(tls_->kernel_writes()), TextStyle::kKeyValue,
                                   "tls tx"},
                                  {"tls_rx", path(tls_->kernel_reads()), TextStyle::kKeyValue,
                                   "rx"},
                                  {"ktls_detail", info.ktls_detail, TextStyle::kParens}};
  base::log_line(spdlog::level::info, {who, "opened", facts});
}

void Session::log_closed(const pump::PumpResult& r) const {
  if (!logs_sessions()) {
    return;
  }
  const bool server = context_->mode == tls::Role::kServer;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started_)
                      .count();
  // `reason` is a stable label for machines; `detail` says it in words (the text line's "(...)").
  std::string_view reason = "closed";
  std::string why = "closed";
  if (!timed_out_.empty()) {
    reason = end_reason_;
    why = timed_out_;
  } else if (r.a_to_b.failed_first) {
    reason = "error";
    why = std::string(server ? "peer→target " : "remote→app ") + r.a_to_b.error;
  } else if (r.b_to_a.failed_first) {
    reason = "error";
    why = std::string(server ? "target→peer " : "app→remote ") + r.b_to_a.error;
  }
  using base::TextStyle;
  const std::string peer = tls_->info().peer.peer_id->str();
  const std::string paths = std::string(pump::path_name(r.a_to_b.path)) + "/" +
                            std::string(pump::path_name(r.b_to_a.path));
  const auto who = log_context();
  const base::LogField facts[] = {{"peer_id", peer, TextStyle::kKeyValue, "peer"},
                                  {"bytes_from_peer", r.a_to_b.bytes},
                                  {"bytes_to_peer", r.b_to_a.bytes},
                                  {"duration_ms", ms},
                                  {"path", paths},
                                  {"reason", reason, TextStyle::kHidden},
                                  {"detail", why, TextStyle::kParens}};
  base::log_line(spdlog::level::info, {who, "closed", facts});
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
