#include "tunnel/stream_target.h"

#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include "spiffe_tunnel/base/log.h"

namespace spiffe_tunnel::tunnel {
namespace {

// HTTP statuses of a refused CONNECT, as ztunnel answers them: 400 for a request this side does
// not serve (not CONNECT, another destination), 503 when the destination cannot be reached.
constexpr int kBadRequest = 400;
constexpr int kUnavailable = 503;

void log_refused(const TunnelContext& c, const StreamWho& who, std::string_view reason,
                 const std::string& detail) {
  c.metrics->refuse_stream(reason);
  const base::LogField ids[] = {{"tunnel", c.name}, {"session", who.session},
                                {"stream", static_cast<uint64_t>(who.stream)}};
  const base::LogField facts[] = {{"reason", reason},
                                  {"peer_id", who.peer, base::TextStyle::kHidden},
                                  {"detail", detail, base::TextStyle::kColon}};
  base::log_line(spdlog::level::warn, {ids, "stream refused", facts});
}

// Connects `socket` to the tunnel's target within the connect timeout.
asio::awaitable<void> connect_target(const TunnelContext& c, base::StreamSocket& socket,
                                     asio::error_code& ec) {
  const Target& target = c.target;
  asio::steady_timer deadline(socket.get_executor());
  deadline.expires_after(c.limits.connect_timeout);
  bool timed_out = false;
  deadline.async_wait([&socket, &timed_out](asio::error_code wec) {
    if (!wec) {
      timed_out = true;
      asio::error_code ignored;
      socket.close(ignored);
    }
  });
  if (!target.unix_path.empty()) {
    const asio::local::stream_protocol::endpoint path(target.unix_path);
    co_await socket.async_connect(asio::generic::stream_protocol::endpoint(path),
                                  asio::redirect_error(asio::use_awaitable, ec));
  } else if (target.literal) {
    co_await socket.async_connect(asio::generic::stream_protocol::endpoint(*target.literal),
                                  asio::redirect_error(asio::use_awaitable, ec));
  } else {
    asio::ip::tcp::resolver resolver(socket.get_executor());
    auto found = co_await resolver.async_resolve(target.host, target.port,
                                                 asio::redirect_error(asio::use_awaitable, ec));
    std::vector<asio::generic::stream_protocol::endpoint> candidates;
    for (const auto& entry : found) {
      candidates.emplace_back(entry.endpoint());
    }
    if (!ec && !timed_out) {
      co_await asio::async_connect(socket, candidates,
                                   asio::redirect_error(asio::use_awaitable, ec));
    }
  }
  deadline.cancel();
  if (timed_out) {
    ec = asio::error::timed_out;
  } else if (!ec && target.unix_path.empty()) {
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
  }
}

// timeouts.idle for one stream: closes both ends when no byte moved for `limit`. The state is
// shared with the timer's handler, which may run after the stream's coroutine went on.
struct IdleWatch {
  explicit IdleWatch(const asio::any_io_executor& ex) : timer(ex) {}
  asio::steady_timer timer;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  bool done = false;
};

void arm_idle(std::shared_ptr<IdleWatch> w, std::chrono::milliseconds limit, mux::Stream* stream,
              base::TcpStream* target) {
  w->timer.expires_at(w->last + limit);
  w->timer.async_wait([w, limit, stream, target](asio::error_code ec) {
    if (ec || w->done) {
      return;  // cancelled: the stream ended, and the pointers with it
    }
    if (std::chrono::steady_clock::now() - w->last >= limit) {
      stream->close();
      target->close();
    } else {
      arm_idle(w, limit, stream, target);
    }
  });
}

std::shared_ptr<IdleWatch> watch_idle(std::chrono::milliseconds limit, mux::Stream& stream,
                                      base::TcpStream& target) {
  auto w = std::make_shared<IdleWatch>(target.socket().get_executor());
  if (limit.count() > 0) {
    arm_idle(w, limit, &stream, &target);
  }
  return w;
}

asio::awaitable<void> run_stream(std::shared_ptr<const TunnelContext> context, StreamWho who,
                                 mux::Request request, std::unique_ptr<mux::Stream> stream) {
  const TunnelContext& c = *context;
  const auto started = std::chrono::steady_clock::now();
  if (request.method != "CONNECT") {
    stream->respond(kBadRequest);
    log_refused(c, who, "not_connect", "method " + request.method + " is not CONNECT");
    co_return;
  }
  if (!authority_names(c.target, request.authority)) {
    stream->respond(kBadRequest);
    log_refused(c, who, "wrong_authority",
                "peer " + who.peer + " asked for " + request.authority +
                    "; this tunnel only connects " + c.target.str());
    co_return;
  }
  base::StreamSocket socket(stream->socket().get_executor());
  asio::error_code ec;
  co_await connect_target(c, socket, ec);
  if (ec) {
    stream->respond(kUnavailable);
    log_refused(c, who, "target_unreachable",
                "cannot connect to target " + c.target.str() + ": " + ec.message());
    co_return;
  }
  stream->respond(200);
  base::TcpStream target(std::move(socket));
  TunnelMetrics& m = *c.metrics;
  m.streams_opened.inc();
  m.streams_active.add(1);
  pump::PumpOptions po;
  po.buffer_size = c.limits.buffer_size;
  po.a_to_b_bytes = &m.bytes_in;
  po.b_to_a_bytes = &m.bytes_out;
  auto idle = watch_idle(c.limits.idle_timeout, *stream, target);
  po.on_activity = [idle] { idle->last = std::chrono::steady_clock::now(); };
  const pump::PumpResult r = co_await pump::pump_both(*stream, target, po);
  idle->done = true;
  idle->timer.cancel();
  m.streams_active.add(-1);
  log_stream_closed(c, who, r, started);
}

}  // namespace

bool authority_names(const Target& target, std::string_view authority) {
  if (!target.unix_path.empty()) {
    return authority == target.unix_path;
  }
  if (authority == target.host + ":" + target.port) {
    return true;
  }
  const auto colon = authority.rfind(':');
  if (!target.literal || colon == std::string_view::npos) {
    return false;
  }
  std::string host(authority.substr(0, colon));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  asio::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  return !ec && address == target.literal->address() &&
         authority.substr(colon + 1) == std::to_string(target.literal->port());
}

void serve_stream(std::shared_ptr<const TunnelContext> context, std::string peer,
                  uint64_t session, mux::Request request, std::unique_ptr<mux::Stream> stream) {
  StreamWho who{session, stream->id(), request.header("forwarded"), std::move(peer)};
  auto ex = stream->socket().get_executor();
  asio::co_spawn(ex,
                 run_stream(std::move(context), std::move(who), std::move(request),
                            std::move(stream)),
                 asio::detached);
}

void log_stream_closed(const TunnelContext& c, const StreamWho& who, const pump::PumpResult& r,
                       std::chrono::steady_clock::time_point started) {
  if (!c.log_sessions || !spdlog::should_log(spdlog::level::info)) {
    return;
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started)
                      .count();
  std::string why = "closed";
  if (r.a_to_b.failed_first) {
    why = "stream→plain " + r.a_to_b.error;
  } else if (r.b_to_a.failed_first) {
    why = "plain→stream " + r.b_to_a.error;
  }
  const base::LogField ids[] = {{"tunnel", c.name}, {"session", who.session},
                                {"stream", static_cast<uint64_t>(who.stream)}};
  const base::LogField facts[] = {{"peer_id", who.peer, base::TextStyle::kKeyValue, "peer"},
                                  {"from", who.from, base::TextStyle::kKeyValue},
                                  {"bytes_from_peer", r.a_to_b.bytes},
                                  {"bytes_to_peer", r.b_to_a.bytes},
                                  {"duration_ms", ms},
                                  {"detail", why, base::TextStyle::kParens}};
  base::log_line(spdlog::level::info, {ids, "stream closed", facts});
}

}  // namespace spiffe_tunnel::tunnel
