#pragma once
// mux::Connection: HTTP/2 (nghttp2) over one established byte stream -- in practice the mTLS
// TlsStream of one carrying connection -- carrying many tunnelled TCP connections, each as one
// stream opened with CONNECT (the HBONE shape; docs/multiplexing.md). The client side opens
// streams with open(); the server side hands each CONNECT request to the handler given to
// create() and answers it with Stream::respond().
//
// Threads: a connection and all its streams live on the carrier's io_context; every member is
// called from that thread only. The connection is shared (shared_ptr) by run() and its streams;
// the carrier stream it reads and writes must outlive run().

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/base/result.h"

struct nghttp2_session;

namespace spiffe_tunnel::mux {

class Stream;
struct StreamState;

enum class Role { kClient, kServer };

// Flow control and limits of one connection. No defaults that matter here: the configuration
// owns them (config::MultiplexConfig); these serve the tests.
struct Settings {
  uint32_t max_streams = 100;               // concurrent streams we accept (server) or open
  uint32_t stream_window = 4 * 1024 * 1024;  // per-stream receive window (SETTINGS_INITIAL_...)
  uint32_t connection_window = 16 * 1024 * 1024;  // connection-level receive window
  uint32_t max_frame_size = 1024 * 1024;     // the largest DATA frame we accept
  std::chrono::milliseconds ping_interval{10000};  // 0: no keepalive pings
  std::chrono::milliseconds ping_timeout{20000};
};

// A CONNECT request as the server side received it.
struct Request {
  std::string method;
  std::string authority;
  std::vector<std::pair<std::string, std::string>> headers;  // the regular (non-pseudo) ones
  std::string header(std::string_view name) const;           // "" when absent
};

// HTTP/2 error codes (RFC 9113 §7) a stream may end with.
inline constexpr uint32_t kNoError = 0x0;
inline constexpr uint32_t kCancel = 0x8;
inline constexpr uint32_t kConnectError = 0xa;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using RequestHandler = std::function<void(Request, std::unique_ptr<Stream>)>;

  // `carrier` must outlive run(). Server role: `on_request` is called once per CONNECT request,
  // on the connection's thread, and must answer it (Stream::respond) sooner or later.
  static base::Result<std::shared_ptr<Connection>> create(Role role, base::ByteStream& carrier,
                                                          Settings settings,
                                                          RequestHandler on_request = {});
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs the connection until the carrier ends, a protocol error, a missed keepalive, close(),
  // or -- after retire() -- the last stream ended. Every open stream is then reset. Returns why
  // it ended, in words ("" for a clean end).
  asio::awaitable<std::string> run();

  // Client role: opens a stream with CONNECT to `authority` ("host:port") and the extra
  // headers, and waits for the answer: the stream when it is 200, else an error naming the
  // status or the reset.
  asio::awaitable<base::Result<std::unique_ptr<Stream>>> open(
      std::string authority, std::vector<std::pair<std::string, std::string>> headers);

  // No new streams from now on (GOAWAY on the server side); run() returns once the open ones
  // have ended. Safe to call twice.
  void retire();
  // Ends the connection now: every stream is reset. Safe to call twice.
  void close(std::string why);

  // True while open() may be called: running, not retired, below both sides' stream limits.
  bool accepts_streams() const;
  std::size_t active_streams() const { return streams_.size(); }
  bool ended() const { return ended_; }

 private:
  friend class Stream;
  Connection(Role role, base::ByteStream& carrier, Settings settings, RequestHandler on_request);
  base::Result<void> start_session();
  asio::awaitable<void> read_loop();
  asio::awaitable<void> write_loop();
  asio::awaitable<void> ping_loop();
  void wake_writer();
  void end_all_streams(const std::string& why);
  void check_retired();

  // The nghttp2 callbacks (connection.cc) reach the members through this.
  friend struct Callbacks;
  void finish(std::string why);
  void request_complete(int32_t id);

  const Role role_;
  base::ByteStream& carrier_;
  const Settings settings_;
  RequestHandler on_request_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, std::shared_ptr<StreamState>> streams_;
  asio::steady_timer writer_wake_;
  std::vector<char> out_;  // the frames write_loop() gathers for one write to the carrier
  asio::steady_timer ping_timer_;
  std::chrono::steady_clock::time_point last_read_;
  std::string end_reason_;
  bool ended_ = false;
  bool retired_ = false;
  bool goaway_received_ = false;
};

// One CONNECT stream as a ByteStream, for the pump: reading returns the peer's DATA, end of
// stream on END_STREAM, an error on RST_STREAM; shutdown_write() sends END_STREAM; close() resets
// the stream (CANCEL) and leaves the connection and its other streams alone. Owned by one
// session on the connection's thread.
class Stream final : public base::ByteStream {
 public:
  Stream(std::shared_ptr<Connection> connection, std::shared_ptr<StreamState> state);
  ~Stream() override;

  // Server role: answers the CONNECT request. 200 opens the tunnel; anything else ends the
  // stream (the status is all the client learns).
  void respond(int status);
  int32_t id() const;

  // base::ByteStream
  asio::awaitable<std::size_t> read_some(std::span<char> buf, asio::error_code& ec) override;
  std::size_t try_read(std::span<char> buf, asio::error_code& ec) override;
  asio::awaitable<void> wait_readable(asio::error_code& ec) override;
  asio::awaitable<void> write_all(std::span<const char> buf, asio::error_code& ec) override;
  asio::awaitable<void> shutdown_write(asio::error_code& ec) override;
  void close() override;
  base::StreamSocket& socket() override { return connection_->carrier_.socket(); }
  bool kernel_writes() const override { return false; }
  bool kernel_reads() const override { return false; }
  std::string last_error() const override;

 private:
  // Tells nghttp2 there is data (or END_STREAM) to frame, and wakes the connection's writer.
  void offer_data();

  std::shared_ptr<Connection> connection_;
  std::shared_ptr<StreamState> state_;
};

}  // namespace spiffe_tunnel::mux
