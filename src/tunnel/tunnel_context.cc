#include "spiffe_tunnel/tunnel/tunnel_context.h"

#include <algorithm>
#include <charconv>

namespace spiffe_tunnel::tunnel {
namespace {

base::Counter& closed_counter(base::MetricsRegistry& r, const std::string& tunnel,
                              std::string_view reason) {
  return r.counter("spiffe_tunnel_sessions_closed_total",
                   "Established sessions that ended, by reason (see docs/metrics.md).",
                   {{"tunnel", tunnel}, {"reason", std::string(reason)}});
}

}  // namespace

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
      handshake_seconds(r.histogram("spiffe_tunnel_handshake_duration_seconds",
                                    "Duration of successful TLS handshakes, including the peer's "
                                    "verification and authorization (not OPA).",
                                    base::short_duration_buckets(), {{"tunnel", t}})),
      session_seconds(r.histogram("spiffe_tunnel_session_duration_seconds",
                                  "Lifetime of established sessions, from accept to close.",
                                  base::session_duration_buckets(), {{"tunnel", t}})),
      key_updates_sent(r.counter("spiffe_tunnel_tls_key_updates_total",
                                 "TLS 1.3 KeyUpdates of the userspace record layer, by direction "
                                 "(sent: our key replaced; received: the peer's).",
                                 {{"tunnel", t}, {"direction", "sent"}})),
      key_updates_received(r.counter("spiffe_tunnel_tls_key_updates_total", "",
                                     {{"tunnel", t}, {"direction", "received"}})),
      registry(r),
      tunnel(t),
      mux_connections(r.gauge("spiffe_tunnel_mux_connections",
                              "Carrying connections (HTTP/2 over mTLS) open now.",
                              {{"tunnel", t}})),
      streams_opened(r.counter("spiffe_tunnel_streams_opened_total",
                               "CONNECT streams established on carrying connections.",
                               {{"tunnel", t}})),
      streams_active(r.gauge("spiffe_tunnel_streams_active",
                             "CONNECT streams open now.", {{"tunnel", t}})),
      resumed(r.counter("spiffe_tunnel_handshakes_resumed_total",
                        "Successful TLS handshakes that resumed a session with a ticket.",
                        {{"tunnel", t}})) {
  for (std::string_view reason : kCloseReasons) {
    closed_counter(r, t, reason);
  }
}

void TunnelMetrics::closed(std::string_view reason) {
  closed_counter(registry, tunnel, reason).inc();
}

void TunnelMetrics::resumption_refused(std::string_view reason) {
  registry
      .counter("spiffe_tunnel_resumptions_refused_total",
               "Session tickets presented or held but not used, by reason.",
               {{"tunnel", tunnel}, {"reason", std::string(reason)}})
      .inc();
}

void TunnelMetrics::reject(std::string_view reason) {
  registry
      .counter("spiffe_tunnel_connections_rejected_total",
               "Connections refused, by reason (see docs/metrics.md).",
               {{"tunnel", tunnel}, {"reason", std::string(reason)}})
      .inc();
}

void TunnelMetrics::log_rejection(std::string_view reason, const base::LogLine& line) {
  const auto d = reject_log->admit(reason);
  if (!d.log) {
    registry
        .counter("spiffe_tunnel_log_lines_suppressed_total",
                 "Rejection log lines left out by the per-tunnel, per-reason rate limit.",
                 {{"tunnel", tunnel}, {"reason", std::string(reason)}})
        .inc();
    return;
  }
  if (d.suppressed_before > 0) {
    const std::string count = std::to_string(d.suppressed_before);
    const base::LogField who[] = {{"tunnel", tunnel}};
    const base::LogField facts[] = {{"reason", reason}, {"suppressed", count}};
    base::log_line(spdlog::level::warn, {who, "suppressed similar lines", facts});
  }
  base::log_line(spdlog::level::warn, line);
}

KeyCheckCadence key_check_cadence(uint64_t key_update_records) {
  constexpr std::size_t kFullRecord = 16 * 1024;
  const uint64_t records = std::clamp<uint64_t>(key_update_records / 16, 1, 256);
  return {static_cast<std::size_t>(records) * kFullRecord,
          static_cast<std::size_t>(std::min<uint64_t>(records, 64))};
}

void TunnelMetrics::refuse_stream(std::string_view reason) {
  registry
      .counter("spiffe_tunnel_streams_refused_total",
               "CONNECT streams refused or failed before they were established, by reason.",
               {{"tunnel", tunnel}, {"reason", std::string(reason)}})
      .inc();
}

Target Target::unix_socket(std::string path) {
  Target t;
  t.unix_path = std::move(path);
  return t;
}

Target Target::of(std::string host, std::string port) {
  Target t{std::move(host), std::move(port), std::nullopt, {}};
  asio::error_code not_ip;
  const auto address = asio::ip::make_address(t.host, not_ip);
  uint16_t number = 0;
  const char* end = t.port.data() + t.port.size();
  if (!not_ip && std::from_chars(t.port.data(), end, number).ptr == end) {
    t.literal = asio::ip::tcp::endpoint(address, number);
  }
  return t;
}

}  // namespace spiffe_tunnel::tunnel
