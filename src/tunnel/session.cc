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

#include "spiffe_tunnel/base/log.h"
#include "spiffe_tunnel/pump/pump.h"
#include "tunnel/carrier_pool.h"
#include "tunnel/socket_names.h"

namespace spiffe_tunnel::tunnel {
namespace {

// One end of `s` (the peer's or ours) when it is an IP endpoint; nullopt for a unix socket or when
// the socket cannot say.
std::optional<asio::ip::tcp::endpoint> end_of(const base::StreamSocket& s, bool remote) {
  asio::error_code ec;
  auto ep = remote ? s.remote_endpoint(ec) : s.local_endpoint(ec);
  return ec ? std::nullopt : ip_endpoint(ep);
}

}  // namespace

Session::Session(std::shared_ptr<const TunnelContext> context, uint64_t id,
                 base::StreamSocket downstream)
    : context_(std::move(context)),
      id_(id),
      peer_address_(peer_name(downstream)),
      proxy_ends_(context_->proxy_protocol == ProxyProtocol::kOff
                      ? nullptr
                      : std::make_unique<const Ends>(
                            Ends{end_of(downstream, true), end_of(downstream, false)})),
      accepted_(std::move(downstream)),
      target_(accepted_.get_executor()),
      deadline_(accepted_.get_executor()),
      idle_timer_(accepted_.get_executor()),
      validity_timer_(accepted_.get_executor()),
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

void Session::abort(std::string reason, std::string label) {
  asio::post(accepted_.get_executor(), [self = shared_from_this(), reason = std::move(reason),
                                        label = std::move(label)] {
    if (!self->finished_) {
      self->timed_out_ = reason;
      self->abort_label_ = label;
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
  if (stream_) {
    stream_->close();
  }
  if (mux_) {
    mux_->close(timed_out_.empty() ? "closed" : timed_out_);
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
      self->abort_label_ = "idle_timeout";
      self->close_all();
    } else {
      self->arm_idle();
    }
  });
}

void Session::reject(std::string_view reason_label, const std::string& detail,
                     std::string_view peer_id) {
  context_->metrics->reject(reason_label);
  last_rejection_ = detail;
  const auto who = log_context();
  // The detail names the peer for the text line; JSON and journald also get it as peer_id.
  const base::LogField facts[] = {{"reason", reason_label},
                                  {"peer_id", peer_id, base::TextStyle::kHidden},
                                  {"detail", detail, base::TextStyle::kColon}};
  context_->metrics->log_rejection(reason_label, {who, "rejected", facts});
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
  const auto began = std::chrono::steady_clock::now();
  std::unique_ptr<tls::TlsStream> stream = co_await handshake_->run();
  disarm_deadline();
  handshake_slot_.release();  // from here on the session counts against max_connections
  if (!handshake_->resumption_refused().empty()) {
    context_->metrics->resumption_refused(handshake_->resumption_refused());
  }
  if (stream) {
    context_->metrics->handshake_seconds.observe(std::chrono::steady_clock::now() - began);
    if (handshake_->resumed()) {
      context_->metrics->resumed.inc();
    }
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
  if (context_->mux && tls_->info().alpn == "h2") {
    co_return true;  // a carrying connection: each stream connects the target (session_mux.cc)
  }
  const bool connected = co_await connect_target();
  if (!connected) {
    co_return false;
  }
  plain_ = std::make_unique<base::TcpStream>(std::move(target_));
  const bool announced = co_await send_proxy_header();
  co_return announced;
}

asio::awaitable<bool> Session::send_proxy_header() {
  if (context_->proxy_protocol == ProxyProtocol::kOff) {
    co_return true;
  }
  const tls::ConnectionInfo& info = tls_->info();
  ProxyHeader h;
  h.source = proxy_ends_->peer;
  h.destination = proxy_ends_->local;
  h.authority = info.server_name;
  h.tls = ProxyTls{info.protocol, info.cipher, info.resumed};
  h.spiffe_id = info.peer.peer_id->str();
  const std::vector<uint8_t> header = encode_v2(h);
  // One write before the pump starts, so nothing can come between; a few hundred bytes into a
  // fresh connection's empty send buffer complete at once, so no deadline is armed.
  const std::span<const char> bytes(reinterpret_cast<const char*>(header.data()), header.size());
  asio::error_code ec;
  co_await plain_->write_all(bytes, ec);
  if (ec) {
    reject("target_unreachable",
           "cannot send the PROXY protocol header to target " + context_->target.str() + ": " +
               ec.message());
    co_return false;
  }
  co_return true;
}

asio::awaitable<bool> Session::open_client() {
  const bool connected = co_await connect_target();
  if (!connected) {
    co_return false;
  }
  if (!carrier_) {
    plain_ = std::make_unique<base::TcpStream>(std::move(accepted_));
  }
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
  const std::string_view proxy = context_->proxy_protocol == ProxyProtocol::kV2 ? "v2" : "";
  const base::LogField facts[] = {{"peer_id", peer, TextStyle::kKeyValue, "peer"},
                                  {"authorized_by", o.authorized_by, TextStyle::kParens},
                                  {"tls_version", info.protocol, TextStyle::kBare},
                                  {"cipher", info.cipher, TextStyle::kBare},
                                  {"resumed", info.resumed ? "true" : "false"},
                                  {"tls_tx", path(tls_->kernel_writes()), TextStyle::kKeyValue,
                                   "tls tx"},
                                  {"tls_rx", path(tls_->kernel_reads()), TextStyle::kKeyValue,
                                   "rx"},
                                  {"ktls_detail", info.ktls_detail, TextStyle::kParens},
                                  {"proxy_protocol", proxy, TextStyle::kKeyValue}};
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
  // `reason` is a stable label for machines (the one spiffe_tunnel_sessions_closed_total counts);
  // `detail` says it in words (the text line's "(...)").
  const std::string_view reason = close_label(r);
  std::string why = "closed";
  if (!timed_out_.empty()) {
    why = timed_out_;
  } else if (r.a_to_b.failed_first) {
    why = std::string(server ? "peer→target " : "remote→app ") + r.a_to_b.error;
  } else if (r.b_to_a.failed_first) {
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

// a is the TLS side (the peer), b the plain side (the target).
std::string_view Session::close_label(const pump::PumpResult& r) const {
  if (!timed_out_.empty()) {
    return abort_label_.empty() ? "aborted" : std::string_view(abort_label_);
  }
  if (r.a_to_b.failed_first) {
    return r.a_to_b.failed_reading ? "peer_error" : "plain_error";
  }
  if (r.b_to_a.failed_first) {
    return r.b_to_a.failed_reading ? "plain_error" : "peer_error";
  }
  return "eof";
}

void Session::mark_established() {
  authorized_ = true;
  context_->metrics->established.inc();
  log_opened();
  // The handshake verified against the snapshot current when it began; anything published
  // since (or while OPA was asked) is checked here, before a byte moves.
  check_validity();
  if (pending_policy_) {
    apply_policy(std::move(pending_policy_));
  }
}

// Bytes were counted while they moved (PumpOptions); the rest is counted when the session ends.
void Session::count_and_log(const pump::PumpResult& r) const {
  TunnelMetrics& m = *context_->metrics;
  m.session_seconds.observe(std::chrono::steady_clock::now() - started_);
  m.closed(close_label(r));
  (r.a_to_b.path == pump::Path::kSplice ? m.path_splice : m.path_userspace).inc();
  (r.b_to_a.path == pump::Path::kSplice ? m.path_splice : m.path_userspace).inc();
  log_closed(r);
}

asio::awaitable<void> Session::run() {
  asio::error_code ec;
  accepted_.set_option(asio::ip::tcp::no_delay(true), ec);

  const bool server = context_->mode == tls::Role::kServer;
  const bool streams = !server && context_->carriers && !carrier_;
  // One co_await per statement: GCC 12 miscompiles co_await inside a conditional expression.
  bool opened = false;
  if (server) {
    opened = co_await open_server();
  } else if (!streams) {
    opened = co_await open_client();
  }
  if (streams) {
    co_await run_stream();
  } else if (opened && mux_wanted()) {
    mark_established();
    co_await carry_streams();
  } else if (carrier_) {
    context_->carriers->failed(accepted_.get_executor(), last_rejection_);
  } else if (opened) {
    mark_established();
    pump::PumpOptions po;
    po.buffer_size = context_->limits.buffer_size;
    // No allow_splice decision here: a stream reports kernel_reads/kernel_writes only when the
    // kernel holds its record layer, which `ktls: off` never allows.
    po.on_activity = [this] { last_activity_ = std::chrono::steady_clock::now(); };
    tls_->observe_key_updates([this](const tls::KeyUpdateEvent& e) { note_key_update(e); });
    if (tls_->kernel_writes() || tls_->kernel_reads()) {
      const uint64_t limit = tls_->info().context->options().key_update_records;
      po.on_chunk = [this, limit, every = key_check_cadence(limit)](std::size_t n) {
        watch_kernel_keys(n, limit, every);
      };
    }
    po.a_to_b_bytes = &context_->metrics->bytes_in;
    po.b_to_a_bytes = &context_->metrics->bytes_out;
    arm_idle();
    // a = TLS side, b = plain side.
    const pump::PumpResult r = co_await pump::pump_both(*tls_, *plain_, po);
    count_and_log(r);
  }
  finished_ = true;
  deadline_.cancel();
  idle_timer_.cancel();
  validity_timer_.cancel();
  close_all();
  context_->metrics->active.add(-1);
  token_.release();
}

}  // namespace spiffe_tunnel::tunnel
