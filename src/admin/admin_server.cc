#include "spiffe_tunnel/admin/admin_server.h"

#include <spdlog/spdlog.h>

#include <asio/read_until.hpp>
#include <asio/steady_timer.hpp>
#include <asio/streambuf.hpp>
#include <asio/write.hpp>

#include "spiffe_tunnel/base/listener.h"

namespace spiffe_tunnel::admin {
namespace {

std::string http_response(int code, const std::string& reason, const std::string& content_type,
                          const std::string& body) {
  return "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + content_type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
         body;
}

// One request on one connection: read the head (bounded in size and time), answer, close.
// Lives on the admin thread; `open` counts the exchanges alive and must outlive this one.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  using Respond = std::function<std::string(const std::string&, const std::string&)>;

  Exchange(asio::ip::tcp::socket socket, Respond respond, std::size_t& open)
      : socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        buf_(8192),
        respond_(std::move(respond)),
        open_(open) {
    ++open_;
  }
  ~Exchange() { --open_; }

  void start(std::chrono::milliseconds timeout) {
    auto self = shared_from_this();
    timer_.expires_after(timeout);
    timer_.async_wait([self](asio::error_code ec) {
      if (!ec) {
        asio::error_code ignored;
        self->socket_.close(ignored);
      }
    });
    asio::async_read_until(socket_, buf_, "\r\n\r\n", [self](asio::error_code ec, std::size_t) {
      self->answer(ec);
    });
  }

 private:
  void answer(asio::error_code ec) {
    if (ec == asio::error::operation_aborted || !socket_.is_open()) {
      return;  // timed out: nobody to answer
    }
    if (ec) {
      reply_ = http_response(400, "Bad Request", "text/plain", "bad request\n");
    } else {
      std::istream in(&buf_);
      std::string method, target, version;
      in >> method >> target >> version;
      reply_ = respond_(method, target);
      if (method == "HEAD") {
        // RFC 9110 §9.3.2: the headers GET would send (Content-Length included), no content.
        reply_.resize(reply_.find("\r\n\r\n") + 4);
      }
    }
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(reply_), [self](asio::error_code, std::size_t) {
      asio::error_code ignored;
      self->socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
      self->socket_.close(ignored);
      self->timer_.cancel();
    });
  }

  asio::ip::tcp::socket socket_;
  asio::steady_timer timer_;
  asio::streambuf buf_;
  std::string reply_;
  Respond respond_;
  std::size_t& open_;
};

}  // namespace

AdminServer::AdminServer(const base::MetricsRegistry& metrics, AdminHooks hooks,
                         AdminLimits limits)
    : metrics_(metrics), hooks_(std::move(hooks)), limits_(limits) {}

AdminServer::~AdminServer() { stop(); }

base::Result<std::unique_ptr<AdminServer>> AdminServer::create(const std::string& host,
                                                               uint16_t port,
                                                               const base::MetricsRegistry& metrics,
                                                               AdminHooks hooks,
                                                               AdminLimits limits) {
  std::unique_ptr<AdminServer> s(new AdminServer(metrics, std::move(hooks), limits));
  auto bound = base::bind_listener(s->acceptor_, "admin endpoint", host, port, 64);
  if (!bound) {
    return bound.error();
  }
  s->local_ = *bound;
  return s;
}

void AdminServer::start() {
  spdlog::info("admin: serving /metrics /healthz /readyz /status on {}:{}",
               local_.address().to_string(), local_.port());
  accept_next();
  thread_ = std::thread([this] { io_.run(); });
}

void AdminServer::stop() {
  io_.stop();
  if (thread_.joinable()) {
    thread_.join();
  }
}

void AdminServer::accept_next() {
  acceptor_.async_accept([this](asio::error_code ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted) {
      return;
    }
    if (ec) {
      pause_accepting(ec);
      return;
    }
    if (failed_accepts_ > 0) {
      spdlog::info("admin: accepting again after {} failed accept(s)", failed_accepts_);
      failed_accepts_ = 0;
    }
    accept_delay_.reset();
    on_accepted(std::move(socket));
    accept_next();
  });
}

// EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable, so accepting again at once would
// spin on the same error. Pause (10 ms doubling to 1 s); exchanges that end meanwhile free
// descriptors. At most one warning a second.
void AdminServer::pause_accepting(const asio::error_code& ec) {
  ++failed_accepts_;
  const auto delay = accept_delay_.next();
  if (const auto d = accept_log_.admit("accept"); d.log) {
    const std::string suppressed =
        d.suppressed_before == 0
            ? std::string()
            : " (" + std::to_string(d.suppressed_before) + " similar lines suppressed)";
    spdlog::warn("admin: accept failed: {}; pausing accepts for {} ms{}", ec.message(),
                 delay.count(), suppressed);
  }
  accept_backoff_.expires_after(delay);
  accept_backoff_.async_wait([this](asio::error_code wec) {
    if (!wec) {
      accept_next();
    }
  });
}

void AdminServer::on_accepted(asio::ip::tcp::socket socket) {
  if (open_ >= limits_.max_connections) {
    // Closed rather than left waiting: a probe fails fast and retries, and the slots free up
    // within request_timeout whatever the other clients do.
    if (!refusing_) {
      spdlog::warn("admin: {} connections open (the limit); closing new ones until one ends",
                   open_);
      refusing_ = true;
    }
    asio::error_code ignored;
    socket.close(ignored);
    return;
  }
  refusing_ = false;
  std::make_shared<Exchange>(
      std::move(socket),
      [this](const std::string& m, const std::string& p) { return respond(m, p); }, open_)
      ->start(limits_.request_timeout);
}

std::string AdminServer::respond(const std::string& method, const std::string& target) const {
  const std::string path = target.substr(0, target.find('?'));
  if (method != "GET" && method != "HEAD") {
    return http_response(405, "Method Not Allowed", "text/plain", "only GET and HEAD\n");
  }
  if (path == "/metrics") {
    return http_response(200, "OK", "text/plain; version=0.0.4", metrics_.render());
  }
  if (path == "/healthz") {
    return http_response(200, "OK", "text/plain", "ok\n");
  }
  if (path == "/readyz") {
    Readiness r = hooks_.readiness ? hooks_.readiness() : Readiness{true, "ready"};
    return r.ready ? http_response(200, "OK", "text/plain", r.detail)
                   : http_response(503, "Service Unavailable", "text/plain", r.detail);
  }
  if (path == "/status") {
    return http_response(200, "OK", "application/json",
                         hooks_.status_json ? hooks_.status_json() : "{}");
  }
  return http_response(404, "Not Found", "text/plain",
                       "not found; try /metrics /healthz /readyz /status\n");
}

}  // namespace spiffe_tunnel::admin
