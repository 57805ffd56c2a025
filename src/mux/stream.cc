#include <nghttp2/nghttp2.h>

#include <cstring>

#include "mux/stream_state.h"
#include "spiffe_tunnel/mux/connection.h"

namespace spiffe_tunnel::mux {

ssize_t read_stream_data(nghttp2_session*, int32_t, uint8_t*, std::size_t length,
                         uint32_t* data_flags, nghttp2_data_source* source, void*) {
  auto* st = static_cast<StreamState*>(source->ptr);
  const std::size_t n = std::min(st->queued(), length);
  if (n == 0 && !st->send_eof) {
    st->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  // The bytes go from the stream's queue straight into the connection's write batch
  // (append_stream_data), not through nghttp2's frame buffer: one copy fewer per byte.
  *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (n == st->queued() && st->send_eof) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  return static_cast<ssize_t>(n);
}

void append_stream_data(StreamState& st, const uint8_t* frame_header, std::size_t length,
                        std::vector<char>& out) {
  out.insert(out.end(), frame_header, frame_header + kFrameHeader);
  const char* data = st.send.data() + st.send_off;
  out.insert(out.end(), data, data + length);
  st.send_off += length;
  if (st.queued() == 0) {
    st.send.clear();
    st.send_off = 0;
  } else if (st.send_off >= kStreamSendQueue) {
    st.send.erase(0, st.send_off);
    st.send_off = 0;
  }
  if (st.queued() < kStreamSendQueue) {
    st.writable.cancel();
  }
}

Stream::Stream(std::shared_ptr<Connection> connection, std::shared_ptr<StreamState> state)
    : connection_(std::move(connection)), state_(std::move(state)) {}

Stream::~Stream() {
  // A stream that ended both ways (its END_STREAM perhaps still queued) is left to finish;
  // anything else is reset, so the peer does not wait for it.
  const bool done = state_->refused || (state_->send_eof && state_->recv_eof);
  if (!done) {
    close();
  }
}

int32_t Stream::id() const { return state_->id; }

void Stream::respond(int status) {
  Connection& c = *connection_;
  if (c.ended_ || state_->closed) {
    return;
  }
  const std::string name = ":status", value = std::to_string(status);
  nghttp2_nv nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                value.size(), NGHTTP2_NV_FLAG_NONE};
  if (status == 200) {
    nghttp2_data_provider provider{};
    provider.source.ptr = state_.get();
    provider.read_callback = &read_stream_data;
    nghttp2_submit_response(c.session_, state_->id, &nv, 1, &provider);
  } else {
    // HEADERS with END_STREAM; nghttp2 resets the request side (NO_ERROR) if it is still open.
    nghttp2_submit_response(c.session_, state_->id, &nv, 1, nullptr);
    state_->refused = true;
  }
  c.wake_writer();
}

std::size_t Stream::try_read(std::span<char> buf, asio::error_code& ec) {
  ec.clear();
  StreamState& st = *state_;
  const std::size_t n = std::min(st.unread(), buf.size());
  if (n > 0) {
    std::memcpy(buf.data(), st.recv.data() + st.recv_off, n);
    st.recv_off += n;
    if (st.recv_off == st.recv.size()) {
      st.recv.clear();
      st.recv_off = 0;
    }
    Connection& c = *connection_;
    if (!c.ended_ && !st.closed) {
      // The reader took these: the peer may send as much again (WINDOW_UPDATE when due).
      nghttp2_session_consume_stream(c.session_, st.id, n);
      c.wake_writer();
    }
    return n;
  }
  if (st.recv_eof) {
    return 0;
  }
  ec = st.closed ? asio::error::connection_reset : asio::error::would_block;
  return 0;
}

asio::awaitable<void> Stream::wait_readable(asio::error_code& ec) {
  ec.clear();
  auto keep = state_;
  while (keep->unread() == 0 && !keep->recv_eof && !keep->closed) {
    co_await wait_for_wake(keep->readable);
  }
}

asio::awaitable<std::size_t> Stream::read_some(std::span<char> buf, asio::error_code& ec) {
  for (;;) {
    const std::size_t n = try_read(buf, ec);
    if (ec != asio::error::would_block) {
      co_return n;
    }
    co_await wait_readable(ec);
  }
}

asio::awaitable<void> Stream::write_all(std::span<const char> buf, asio::error_code& ec) {
  ec.clear();
  auto keep = state_;
  StreamState& st = *keep;
  if (st.closed || st.send_eof) {
    ec = asio::error::broken_pipe;
    co_return;
  }
  st.send.append(buf.data(), buf.size());
  offer_data();
  // Back-pressure: the session's next read from its socket waits until the peer's window (and
  // the carrier) took most of what is queued.
  while (st.queued() >= kStreamSendQueue && !st.closed) {
    co_await wait_for_wake(st.writable);
  }
  if (st.closed && !st.error.empty()) {
    ec = asio::error::connection_reset;
  }
}

asio::awaitable<void> Stream::shutdown_write(asio::error_code& ec) {
  ec.clear();
  StreamState& st = *state_;
  if (st.closed) {
    ec = st.error.empty() ? asio::error_code{} : asio::error::connection_reset;
    co_return;
  }
  st.send_eof = true;
  offer_data();
}

void Stream::offer_data() {
  StreamState& st = *state_;
  Connection& c = *connection_;
  if (st.deferred) {
    st.deferred = false;
    nghttp2_session_resume_data(c.session_, st.id);
  }
  c.wake_writer();
}

void Stream::close() {
  StreamState& st = *state_;
  Connection& c = *connection_;
  if (!st.closed && !c.ended_) {
    nghttp2_submit_rst_stream(c.session_, NGHTTP2_FLAG_NONE, st.id, NGHTTP2_CANCEL);
    c.wake_writer();
  }
  st.end("stream reset locally");
}

std::string Stream::last_error() const { return state_->error; }

}  // namespace spiffe_tunnel::mux
