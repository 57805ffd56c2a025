// Multiplexed sessions (docs/multiplexing.md): a carrying connection runs HTTP/2 over its
// verified, authorized mTLS stream; each tunnelled TCP connection is one CONNECT stream on it.
// The carrying connection is a Session like a dedicated one, so drain, policy and identity
// rechecks and the validity rules end it -- and with it every stream it carries, each with the
// reason. A stream's end (reset, error, slow reader) concerns that stream alone.
#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/post.hpp>

#include "session.h"
#include "spiffe_tunnel/base/log.h"
#include "tunnel/carrier_pool.h"
#include "tunnel/stream_target.h"

namespace spiffe_tunnel::tunnel {

bool Session::mux_wanted() const {
  return carrier_ || (context_->mux && tls_ && tls_->info().alpn == "h2");
}

void Session::retire() {
  asio::post(accepted_.get_executor(), [self = shared_from_this()] {
    if (self->mux_ && !self->finished_) {
      self->mux_->retire();
    }
  });
}

asio::awaitable<void> Session::carry_streams() {
  const bool server = context_->mode == tls::Role::kServer;
  const std::string peer = tls_->info().peer.peer_id->str();
  if (tls_->info().alpn != "h2") {
    // Only a client carrier gets here without h2: the server tunnel does not multiplex.
    reject("mux_unsupported", "server tunnel at " + context_->target.str() + " (peer " + peer +
                                  ") did not agree on ALPN h2; is multiplex set on it?",
                              peer);
    context_->carriers->failed(accepted_.get_executor(), last_rejection_);
    co_return;
  }
  mux::Connection::RequestHandler on_request;
  if (server) {
    on_request = [ctx = context_, peer, id = id_](mux::Request request,
                                                  std::unique_ptr<mux::Stream> stream) {
      serve_stream(ctx, peer, id, std::move(request), std::move(stream));
    };
  }
  auto made = mux::Connection::create(server ? mux::Role::kServer : mux::Role::kClient, *tls_,
                                      context_->mux->settings, std::move(on_request));
  if (!made) {
    reject("internal", made.error().message, peer);
    if (carrier_) {
      context_->carriers->failed(accepted_.get_executor(), made.error().message);
    }
    co_return;
  }
  mux_ = std::move(*made);
  TunnelMetrics& m = *context_->metrics;
  m.mux_connections.add(1);
  if (carrier_) {
    context_->carriers->established(accepted_.get_executor(), mux_);
  }
  const std::string why = co_await mux_->run();
  if (carrier_) {
    context_->carriers->ended(accepted_.get_executor(), mux_.get());
  }
  m.mux_connections.add(-1);
  m.session_seconds.observe(std::chrono::steady_clock::now() - started_);
  m.closed(!timed_out_.empty() ? (abort_label_.empty() ? "aborted" : abort_label_)
                               : (why.empty() ? "eof" : "peer_error"));
  log_carrier_closed(why);
}

void Session::log_carrier_closed(const std::string& why) const {
  if (!logs_sessions()) {
    return;
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started_)
                      .count();
  const std::string detail = !timed_out_.empty() ? timed_out_ : why.empty() ? "closed" : why;
  const auto who = log_context();
  const std::string peer = tls_->info().peer.peer_id->str();
  const base::LogField facts[] = {{"peer_id", peer, base::TextStyle::kKeyValue, "peer"},
                                  {"carrying", "h2", base::TextStyle::kKeyValue},
                                  {"duration_ms", ms},
                                  {"detail", detail, base::TextStyle::kParens}};
  base::log_line(spdlog::level::info, {who, "closed", facts});
}

asio::awaitable<void> Session::run_stream() {
  TunnelMetrics& m = *context_->metrics;
  plain_ = std::make_unique<base::TcpStream>(std::move(accepted_));
  auto connection =
      co_await context_->carriers->acquire(plain_->socket().get_executor(),
                                           context_->limits.connect_timeout);
  if (!connection) {
    m.refuse_stream("no_connection");
    reject("mux_unavailable", connection.error().message);
    co_return;
  }
  // RFC 7239 Forwarded, as ztunnel sends it: who connected to this client tunnel.
  std::vector<std::pair<std::string, std::string>> headers{
      {"forwarded", "for=\"" + peer_address_ + "\""}};
  auto opened = co_await (*connection)->open(context_->mux->authority, std::move(headers));
  // Opening the stream is this connection's handshake: from here on it counts against
  // max_connections, not against the handshake limits.
  handshake_slot_.release();
  if (!opened) {
    m.refuse_stream("refused");
    reject("stream_refused", opened.error().message);
    co_return;
  }
  stream_ = std::move(*opened);
  if (!timed_out_.empty()) {
    co_return;  // aborted while the stream opened
  }
  m.streams_opened.inc();
  m.streams_active.add(1);
  pump::PumpOptions po;
  po.buffer_size = context_->limits.buffer_size;
  po.on_activity = [this] { last_activity_ = std::chrono::steady_clock::now(); };
  po.a_to_b_bytes = &m.bytes_in;
  po.b_to_a_bytes = &m.bytes_out;
  arm_idle();  // timeouts.idle applies to each stream of a client tunnel
  // a = the stream (the peer's side), b = the application's connection.
  const pump::PumpResult r = co_await pump::pump_both(*stream_, *plain_, po);
  m.streams_active.add(-1);
  log_stream_closed(*context_, {id_, stream_->id(), peer_address_, ""}, r, started_);
}

}  // namespace spiffe_tunnel::tunnel
