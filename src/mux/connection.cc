#include "spiffe_tunnel/mux/connection.h"

#include <nghttp2/nghttp2.h>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <cassert>
#include <cctype>

#include "mux/stream_state.h"

namespace spiffe_tunnel::mux {
namespace {

// What the write loop gathers from nghttp2 before one write to the carrier: several frames per
// TLS write, as the dedicated pump gathers several records.
constexpr std::size_t kWriteBatch = 256 * 1024;
// The largest DATA frame we send, within the peer's SETTINGS_MAX_FRAME_SIZE and window.
constexpr std::size_t kMaxDataFrame = 64 * 1024;

std::string_view view(const uint8_t* p, std::size_t n) {
  return {reinterpret_cast<const char*>(p), n};
}

std::string error_code_name(uint32_t code) {
  return nghttp2_http2_strerror(code) + std::string(" (") + std::to_string(code) + ")";
}

}  // namespace

std::string Request::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) {
      return v;
    }
  }
  return {};
}

asio::awaitable<void> wait_for_wake(asio::steady_timer& t) {
  t.expires_at(asio::steady_timer::time_point::max());
  asio::error_code ignored;
  co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
}

// The nghttp2 callbacks; user_data is the Connection.
struct Callbacks {
  static Connection& of(void* p) { return *static_cast<Connection*>(p); }

  static StreamState* state(Connection& c, int32_t id) {
    auto it = c.streams_.find(id);
    return it == c.streams_.end() ? nullptr : it->second.get();
  }

  static int begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* p) {
    Connection& c = of(p);
    if (c.role_ != Role::kServer || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      return 0;
    }
    auto st = std::make_shared<StreamState>(c.writer_wake_.get_executor());
    st->id = frame->hd.stream_id;
    c.streams_[st->id] = std::move(st);
    return 0;
  }

  static int header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                    size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* p) {
    Connection& c = of(p);
    StreamState* st = state(c, frame->hd.stream_id);
    if (st == nullptr || frame->hd.type != NGHTTP2_HEADERS) {
      return 0;
    }
    const std::string_view n = view(name, namelen), v = view(value, valuelen);
    if (c.role_ == Role::kClient) {
      if (n == ":status") {
        st->status = std::atoi(std::string(v).c_str());
      }
    } else if (n == ":method") {
      st->request.method = v;
    } else if (n == ":authority") {
      st->request.authority = v;
    } else if (!n.empty() && n[0] != ':') {
      st->request.headers.emplace_back(n, v);
    }
    return 0;
  }

  static int frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* p) {
    Connection& c = of(p);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
      c.goaway_received_ = true;
      return 0;
    }
    StreamState* st = state(c, frame->hd.stream_id);
    if (st == nullptr) {
      return 0;
    }
    if (frame->hd.type == NGHTTP2_HEADERS) {
      if (c.role_ == Role::kServer && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        c.request_complete(st->id);
      } else if (c.role_ == Role::kClient && st->status >= 200) {
        st->answered = true;
        st->readable.cancel();
      }
    }
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
      st->recv_eof = true;
      st->readable.cancel();
    }
    return 0;
  }

  static int data_chunk(nghttp2_session* s, uint8_t, int32_t id, const uint8_t* data, size_t len,
                        void* p) {
    Connection& c = of(p);
    // The connection window is returned at once: only the stream's own window holds back a
    // stream whose reader is slow, never its siblings (the stream's share is returned as its
    // session reads, Stream::try_read).
    nghttp2_session_consume_connection(s, len);
    StreamState* st = state(c, id);
    if (st == nullptr || st->closed) {
      return 0;
    }
    st->recv.append(reinterpret_cast<const char*>(data), len);
    st->readable.cancel();
    return 0;
  }

  static int stream_close(nghttp2_session*, int32_t id, uint32_t error_code, void* p) {
    Connection& c = of(p);
    auto it = c.streams_.find(id);
    if (it == c.streams_.end()) {
      return 0;
    }
    std::shared_ptr<StreamState> st = std::move(it->second);
    c.streams_.erase(it);
    if (error_code != NGHTTP2_NO_ERROR || !st->recv_eof) {
      st->end("stream reset by the peer: " + error_code_name(error_code));
    } else {
      st->end("");
    }
    c.check_retired();
    return 0;
  }

  // NO_COPY DATA frames (read_stream_data): the frame goes into the write batch. No padding is
  // ever asked for, so a frame is its header and its data.
  static int send_data(nghttp2_session*, nghttp2_frame* frame, const uint8_t* frame_header,
                       size_t length, nghttp2_data_source* source, void* p) {
    assert(frame->data.padlen == 0);
    (void)frame;
    append_stream_data(*static_cast<StreamState*>(source->ptr), frame_header, length,
                       of(p).out_);
    return 0;
  }

  static ssize_t data_length(nghttp2_session*, uint8_t, int32_t, int32_t connection_window,
                             int32_t stream_window, uint32_t remote_max_frame, void*) {
    const int32_t window = std::max(std::min(connection_window, stream_window), 1);
    return static_cast<ssize_t>(std::min<std::size_t>(
        {static_cast<std::size_t>(window), remote_max_frame, kMaxDataFrame}));
  }
};

Connection::Connection(Role role, base::ByteStream& carrier, Settings settings,
                       RequestHandler on_request)
    : role_(role),
      carrier_(carrier),
      settings_(settings),
      on_request_(std::move(on_request)),
      writer_wake_(carrier.socket().get_executor()),
      ping_timer_(carrier.socket().get_executor()),
      last_read_(std::chrono::steady_clock::now()) {}

Connection::~Connection() {
  streams_.clear();
  nghttp2_session_del(session_);
}

base::Result<std::shared_ptr<Connection>> Connection::create(Role role, base::ByteStream& carrier,
                                                             Settings settings,
                                                             RequestHandler on_request) {
  std::shared_ptr<Connection> c(new Connection(role, carrier, settings, std::move(on_request)));
  if (auto started = c->start_session(); !started) {
    return started.error();
  }
  return c;
}

base::Result<void> Connection::start_session() {
  nghttp2_session_callbacks* cbs = nullptr;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, &Callbacks::begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, &Callbacks::header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, &Callbacks::frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &Callbacks::data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &Callbacks::stream_close);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cbs, &Callbacks::data_length);
  nghttp2_session_callbacks_set_send_data_callback(cbs, &Callbacks::send_data);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  // Window updates follow what each stream's reader consumed (see Callbacks::data_chunk).
  nghttp2_option_set_no_auto_window_update(opt, 1);
  const int rv = role_ == Role::kClient ? nghttp2_session_client_new2(&session_, cbs, this, opt)
                                        : nghttp2_session_server_new2(&session_, cbs, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) {
    return base::make_error(std::string("cannot start HTTP/2: ") + nghttp2_strerror(rv));
  }
  const nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings_.max_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings_.stream_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, settings_.max_frame_size},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
  // ENABLE_PUSH is a client's setting only (RFC 9113 §6.5.2).
  const std::size_t n = role_ == Role::kClient ? 4 : 3;
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, n) != 0 ||
      nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                            static_cast<int32_t>(settings_.connection_window)) !=
          0) {
    return base::make_error("cannot apply the HTTP/2 settings");
  }
  return {};
}

asio::awaitable<std::string> Connection::run() {
  auto keep = shared_from_this();
  using namespace asio::experimental::awaitable_operators;
  wake_writer();
  if (settings_.ping_interval.count() > 0) {
    co_await (read_loop() && write_loop() && ping_loop());
  } else {
    co_await (read_loop() && write_loop());
  }
  co_return end_reason_;
}

asio::awaitable<void> Connection::read_loop() {
  std::vector<char> buf(64 * 1024);
  while (!ended_) {
    asio::error_code ec;
    const std::size_t n = co_await carrier_.read_some(buf, ec);
    if (ended_) {
      break;
    }
    if (ec) {
      const std::string detail = carrier_.last_error();
      finish("carrying connection read: " + (detail.empty() ? ec.message() : detail));
      break;
    }
    if (n == 0) {
      finish(streams_.empty() ? "" : "the peer closed the carrying connection");
      break;
    }
    last_read_ = std::chrono::steady_clock::now();
    const ssize_t rv =
        nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(buf.data()), n);
    if (rv < 0) {
      finish(std::string("HTTP/2 protocol error: ") + nghttp2_strerror(static_cast<int>(rv)));
      break;
    }
    wake_writer();
  }
}

asio::awaitable<void> Connection::write_loop() {
  out_.reserve(kWriteBatch + kMaxDataFrame + 64);
  while (!ended_) {
    out_.clear();
    while (out_.size() < kWriteBatch) {
      const std::size_t before = out_.size();
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) {
        finish(std::string("HTTP/2: ") + nghttp2_strerror(static_cast<int>(n)));
        co_return;
      }
      // As chars: a uint8_t range would be inserted element by element, not with memcpy.
      const char* bytes = reinterpret_cast<const char*>(data);
      out_.insert(out_.end(), bytes, bytes + n);
      if (out_.size() == before) {
        break;  // nothing framed, not even a NO_COPY DATA frame (Callbacks::send_data)
      }
    }
    if (!out_.empty()) {
      asio::error_code ec;
      co_await carrier_.write_all(out_, ec);
      if (ec) {
        finish("carrying connection write: " + ec.message());
        co_return;
      }
      continue;
    }
    if (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0) {
      // GOAWAY sent and every stream over: a clean end (close_notify, then FIN).
      asio::error_code ignored;
      co_await carrier_.shutdown_write(ignored);
      finish("");
      co_return;
    }
    co_await wait_for_wake(writer_wake_);
  }
}

asio::awaitable<void> Connection::ping_loop() {
  // Keepalive as ztunnel does it: a PING after an interval without reading anything, and the
  // connection ends when nothing (not even the PING ACK) arrived for interval + timeout.
  const auto interval = settings_.ping_interval;
  const auto limit = interval + settings_.ping_timeout;
  while (!ended_) {
    ping_timer_.expires_after(interval);
    asio::error_code ec;
    co_await ping_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (ended_) {
      break;
    }
    const auto quiet = std::chrono::steady_clock::now() - last_read_;
    if (quiet >= limit) {
      finish("no answer to a keepalive PING for " +
             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(quiet).count()) +
             "s");
      break;
    }
    if (quiet >= interval) {
      nghttp2_submit_ping(session_, NGHTTP2_FLAG_NONE, nullptr);
      wake_writer();
    }
  }
}

void Connection::wake_writer() { writer_wake_.cancel(); }

void Connection::finish(std::string why) {
  if (ended_) {
    return;
  }
  ended_ = true;
  end_reason_ = std::move(why);
  end_all_streams(end_reason_.empty() ? "the carrying connection ended" : end_reason_);
  writer_wake_.cancel();
  ping_timer_.cancel();
  carrier_.close();
}

void Connection::close(std::string why) { finish(std::move(why)); }

void Connection::end_all_streams(const std::string& why) {
  for (auto& [id, st] : streams_) {
    st->end(why);
  }
}

void Connection::retire() {
  if (retired_ || ended_) {
    return;
  }
  retired_ = true;
  if (role_ == Role::kServer) {
    // Graceful GOAWAY: the streams opened so far finish, the client opens new ones elsewhere.
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                          nullptr, 0);
  }
  check_retired();
  wake_writer();
}

void Connection::check_retired() {
  if (retired_ && !ended_ && streams_.empty()) {
    nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
    wake_writer();
  }
}

bool Connection::accepts_streams() const {
  if (ended_ || retired_ || goaway_received_) {
    return false;
  }
  const uint32_t remote =
      nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return streams_.size() < std::min(settings_.max_streams, remote);
}

void Connection::request_complete(int32_t id) {
  auto st = streams_.at(id);
  auto stream = std::make_unique<Stream>(shared_from_this(), st);
  if (retired_ || !on_request_) {
    stream->respond(503);
    return;
  }
  on_request_(st->request, std::move(stream));
}

asio::awaitable<base::Result<std::unique_ptr<Stream>>> Connection::open(
    std::string authority, std::vector<std::pair<std::string, std::string>> headers) {
  auto keep = shared_from_this();
  if (role_ != Role::kClient || !accepts_streams()) {
    co_return base::make_error("the carrying connection takes no new streams");
  }
  auto st = std::make_shared<StreamState>(writer_wake_.get_executor());
  const auto nv = [](const std::string& n, const std::string& v) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                      NGHTTP2_NV_FLAG_NONE};
  };
  const std::string method_name = ":method", method = "CONNECT", authority_name = ":authority";
  std::vector<nghttp2_nv> nva{nv(method_name, method), nv(authority_name, authority)};
  for (const auto& [k, v] : headers) {
    nva.push_back(nv(k, v));
  }
  nghttp2_data_provider provider{};
  provider.source.ptr = st.get();
  provider.read_callback = &read_stream_data;
  const int32_t id =
      nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), &provider, st.get());
  if (id < 0) {
    co_return base::make_error(std::string("cannot open a stream: ") + nghttp2_strerror(id));
  }
  st->id = id;
  streams_[id] = st;
  wake_writer();
  while (!st->answered && !st->closed) {
    co_await wait_for_wake(st->readable);
  }
  if (!st->answered) {
    co_return base::make_error("CONNECT " + authority + " got no answer: " + st->error);
  }
  auto stream = std::make_unique<Stream>(shared_from_this(), st);
  if (st->status != 200) {
    stream->close();
    co_return base::make_error("CONNECT " + authority + " refused with status " +
                               std::to_string(st->status));
  }
  co_return stream;
}

}  // namespace spiffe_tunnel::mux
