#pragma once
// The server side of one CONNECT stream (docs/multiplexing.md): checks the requested authority
// against the tunnel's target, connects the target, answers, pumps, logs and counts. Runs as its
// own coroutine on the carrying connection's thread and ends with the stream; it holds the
// tunnel context, never the carrying session.

#include <chrono>
#include <memory>
#include <string>

#include "spiffe_tunnel/mux/connection.h"
#include "spiffe_tunnel/pump/pump.h"
#include "spiffe_tunnel/tunnel/tunnel_context.h"

namespace spiffe_tunnel::tunnel {

// Who a stream's lines are about: its carrying session, its stream id, where it came from, and
// the peer's SPIFFE ID (server side).
struct StreamWho {
  uint64_t session = 0;
  int32_t stream = 0;
  std::string from;
  std::string peer;
};

// Starts serving `stream` (a CONNECT `request` from `peer` on carrying session `session`).
void serve_stream(std::shared_ptr<const TunnelContext> context, std::string peer,
                  uint64_t session, mux::Request request, std::unique_ptr<mux::Stream> stream);

// True when a CONNECT authority names `target` ("host:port"; IP literals compared as addresses).
bool authority_names(const Target& target, std::string_view authority);

// The closing line of one stream, when the tunnel logs sessions.
void log_stream_closed(const TunnelContext& context, const StreamWho& who,
                       const pump::PumpResult& r, std::chrono::steady_clock::time_point started);

}  // namespace spiffe_tunnel::tunnel
