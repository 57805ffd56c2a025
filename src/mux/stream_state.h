#pragma once
// StreamState: what one CONNECT stream holds between the connection's nghttp2 callbacks and the
// Stream its session reads and writes. Shared by the connection (while nghttp2 knows the stream)
// and the Stream; used on the connection's thread only.

#include <asio/steady_timer.hpp>
#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <string>
#include <vector>

#include "spiffe_tunnel/mux/connection.h"

namespace spiffe_tunnel::mux {

// Bytes a writer may queue on one stream before write_all() waits for them to be framed.
inline constexpr std::size_t kStreamSendQueue = 512 * 1024;

struct StreamState {
  explicit StreamState(const asio::any_io_executor& ex) : readable(ex), writable(ex) {}

  int32_t id = -1;
  Request request;    // server role: the CONNECT request as received
  int status = 0;     // client role: the answer's :status, 0 until the answer came
  bool answered = false;  // client role: the answer's HEADERS arrived
  bool refused = false;   // server role: answered with a non-200 status (the stream is over)

  // Received DATA not yet read by the session; recv_off bytes of it are read already.
  std::string recv;
  std::size_t recv_off = 0;
  bool recv_eof = false;  // END_STREAM received

  // Bytes the session wrote that nghttp2 has not yet framed; send_off of them are framed.
  std::string send;
  std::size_t send_off = 0;
  bool send_eof = false;  // shutdown_write(): END_STREAM after the queued bytes
  bool deferred = false;  // the data source said DEFERRED; resume on the next write

  bool closed = false;    // reset, closed by nghttp2 or the connection ended
  std::string error;      // why, when it did not end with END_STREAM both ways

  asio::steady_timer readable;  // cancelled to wake a reader (data, end, answer, close)
  asio::steady_timer writable;  // cancelled to wake a writer (queue drained, close)

  std::size_t queued() const { return send.size() - send_off; }
  std::size_t unread() const { return recv.size() - recv_off; }
  // Marks the stream over and wakes whoever waits on it.
  void end(std::string why) {
    if (!closed) {
      closed = true;
      error = std::move(why);
    }
    readable.cancel();
    writable.cancel();
  }
};

// Waits until `t` is cancelled (the wake-up of one waiter). Callers re-check their condition.
asio::awaitable<void> wait_for_wake(asio::steady_timer& t);

// The nghttp2 data source of a stream: offers queued bytes (without copying them: NO_COPY),
// END_STREAM after shutdown_write().
ssize_t read_stream_data(nghttp2_session* session, int32_t id, uint8_t* buf, std::size_t length,
                         uint32_t* data_flags, nghttp2_data_source* source, void* user_data);

// The size of an HTTP/2 frame header (RFC 9113 §4.1).
inline constexpr std::size_t kFrameHeader = 9;

// Appends one DATA frame -- nghttp2's 9-byte `frame_header`, then `length` queued bytes of `st`
// -- to `out`, and takes those bytes off the queue.
void append_stream_data(StreamState& st, const uint8_t* frame_header, std::size_t length,
                        std::vector<char>& out);

}  // namespace spiffe_tunnel::mux
