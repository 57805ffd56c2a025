#include "spiffe_tunnel/pump/pump.h"

#include <fcntl.h>
#include <unistd.h>

#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <memory>
#include <vector>

#include "spiffe_tunnel/base/unique_fd.h"

namespace spiffe_tunnel::pump {
namespace {

using Socket = base::StreamSocket;

// Ends a direction with `what`; `reading` says whether the source (not the destination) failed.
void fail(DirectionResult& out, bool reading, std::string what) {
  out.error = std::move(what);
  out.failed_reading = reading;
}

std::string describe(const base::ByteStream& s, const asio::error_code& ec) {
  const std::string detail = s.last_error();
  return detail.empty() ? ec.message() : detail;
}

// Counts `n` bytes delivered: in the result, in the live counter, and as activity.
void moved(DirectionResult& out, std::size_t n, base::Counter* live, const PumpOptions& options) {
  out.bytes += n;
  if (live != nullptr) {
    live->inc(n);
  }
  if (options.on_activity) {
    options.on_activity();
  }
  if (options.on_chunk) {
    options.on_chunk(n);
  }
}

// Moves one chunk read by read_some() (userspace) to `to`. Returns false when the direction ends.
asio::awaitable<bool> copy_chunk(base::ByteStream& from, base::ByteStream& to, char* buf,
                                 std::size_t size, const PumpOptions& options,
                                 DirectionResult& out, base::Counter* live) {
  asio::error_code ec;
  const std::size_t n = co_await from.read_some({buf, size}, ec);
  if (ec) {
    fail(out, true, "read: " + describe(from, ec));
    co_return false;
  }
  if (n == 0) {
    co_await to.shutdown_write(ec);
    out.clean_end = !ec;
    if (ec) {
      fail(out, false, "shutdown: " + ec.message());
    }
    co_return false;
  }
  co_await to.write_all({buf, n}, ec);
  if (ec) {
    fail(out, false, "write: " + describe(to, ec));
    co_return false;
  }
  moved(out, n, live, options);
  co_return true;
}

// Pump buffers are taken from a per-thread free list only while a direction has data to move,
// so an idle session holds none (memory per idle connection is the sockets, the SSL object and
// the coroutine frames).
class BufferPool {
 public:
  static std::unique_ptr<char[]> acquire(std::size_t size) {
    auto& free = list(size);
    if (!free.empty()) {
      auto b = std::move(free.back());
      free.pop_back();
      return b;
    }
    return std::make_unique_for_overwrite<char[]>(size);
  }
  static void release(std::unique_ptr<char[]> b, std::size_t size) {
    auto& free = list(size);
    if (b && free.size() < kKeep) {
      free.push_back(std::move(b));
    }
  }

 private:
  static constexpr std::size_t kKeep = 4;
  static std::vector<std::unique_ptr<char[]>>& list(std::size_t size) {
    // One list per buffer size in use on this thread (in practice one).
    thread_local std::vector<std::pair<std::size_t, std::vector<std::unique_ptr<char[]>>>> lists;
    for (auto& [s, l] : lists) {
      if (s == size) {
        return l;
      }
    }
    return lists.emplace_back(size, std::vector<std::unique_ptr<char[]>>{}).second;
  }
};

// Reads what `from` has now into one buffer -- several TLS records per write on the other side --
// and writes it on; waits for readability, holding no buffer, when there is nothing.
asio::awaitable<void> copy_userspace(base::ByteStream& from, base::ByteStream& to,
                                     const PumpOptions& options, DirectionResult& out,
                                     base::Counter* live) {
  const std::size_t size = std::max(options.buffer_size, kRecordBuffer * 2);
  std::unique_ptr<char[]> buf;
  asio::error_code ec;
  for (;;) {
    if (!buf) {
      buf = BufferPool::acquire(size);
    }
    std::size_t filled = 0;
    bool eof = false;
    for (;;) {
      const std::size_t n = from.try_read({buf.get() + filled, size - filled}, ec);
      if (ec) {
        break;
      }
      if (n == 0) {
        eof = true;
        break;
      }
      filled += n;
      if (size - filled < kRecordBuffer) {
        break;
      }
    }
    const bool would_block = ec == asio::error::would_block;
    if (ec && !would_block) {
      fail(out, true, "read: " + describe(from, ec));
      break;
    }
    if (filled > 0) {
      asio::error_code wec;
      co_await to.write_all({buf.get(), filled}, wec);
      if (wec) {
        fail(out, false, "write: " + describe(to, wec));
        break;
      }
      moved(out, filled, live, options);
    }
    if (eof) {
      co_await to.shutdown_write(ec);
      out.clean_end = !ec;
      if (ec) {
        fail(out, false, "shutdown: " + ec.message());
      }
      break;
    }
    if (would_block) {
      BufferPool::release(std::move(buf), size);
      co_await from.wait_readable(ec);
      if (ec) {
        fail(out, true, "read: " + ec.message());
        break;
      }
    }
  }
  BufferPool::release(std::move(buf), size);
}

// Drains `pipe_r` (holding `pending` bytes) into `to`'s socket. No SPLICE_F_MORE: on a kernel
// TLS socket it holds back the partial record until more data comes, which stalls interactive
// traffic.
asio::awaitable<bool> drain_pipe(int pipe_r, std::size_t& pending, base::ByteStream& to,
                                 DirectionResult& out) {
  Socket& dst = to.socket();
  while (pending > 0) {
    const ssize_t n = ::splice(pipe_r, nullptr, dst.native_handle(), nullptr, pending,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      pending -= static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      asio::error_code ec;
      co_await dst.async_wait(Socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        fail(out, false, "write: " + ec.message());
        co_return false;
      }
      continue;
    }
    fail(out, false,
         std::string("splice to socket: ") + (n == 0 ? "no progress" : std::strerror(errno)));
    co_return false;
  }
  co_return true;
}

// socket → pipe → socket without copying through userspace. When `from` is a kernel TLS socket,
// splice stops with EINVAL at the first non-data record (alert, post-handshake message): that one
// record is read through from.read_some(), which handles it, and splicing resumes.
asio::awaitable<void> copy_splice(base::ByteStream& from, base::ByteStream& to,
                                  const PumpOptions& options, DirectionResult& out,
                                  base::Counter* live) {
  out.path = Path::kSplice;
  // The pipe is made when the first data comes, so idle sessions hold no pipe descriptors.
  if (!from.has_buffered_input()) {
    asio::error_code ec;
    co_await from.wait_readable(ec);
    if (ec) {
      fail(out, true, "read: " + ec.message());
      co_return;
    }
  }
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    // Out of file descriptors: this direction still works, just with copies.
    out.path = Path::kUserspace;
    co_return co_await copy_userspace(from, to, options, out, live);
  }
  base::UniqueFd pipe_r(fds[0]), pipe_w(fds[1]);
  const std::size_t chunk = std::max(options.buffer_size, kRecordBuffer * 2);
  // A larger pipe means fewer splice calls per byte; the system limit may refuse it, which is fine.
  ::fcntl(pipe_w.get(), F_SETPIPE_SZ, static_cast<int>(chunk));
  // For the rare record that splice refuses (alerts, tickets); allocated on first use.
  std::unique_ptr<char[]> record_buf;
  auto record = [&record_buf] {
    if (!record_buf) {
      record_buf = std::make_unique_for_overwrite<char[]>(kRecordBuffer);
    }
    return record_buf.get();
  };
  Socket& src = from.socket();
  for (;;) {
    while (from.has_buffered_input()) {
      if (!co_await copy_chunk(from, to, record(), kRecordBuffer, options, out, live)) {
        co_return;
      }
    }
    const ssize_t n = ::splice(src.native_handle(), nullptr, pipe_w.get(), nullptr,
                               chunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      std::size_t pending = static_cast<std::size_t>(n);
      if (!co_await drain_pipe(pipe_r.get(), pending, to, out)) {
        break;
      }
      moved(out, static_cast<std::size_t>(n), live, options);
      continue;
    }
    if (n == 0) {
      // End of the TCP stream. Whether that is a clean end (TCP, or TLS after close_notify) or a
      // truncation (TLS without close_notify) is the stream's call: ask it with one read.
      co_await copy_chunk(from, to, record(), kRecordBuffer, options, out, live);
      co_return;
    }
    const int e = errno;
    if (e == EAGAIN || e == EINTR) {
      asio::error_code ec;
      co_await src.async_wait(Socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        fail(out, true, "read: " + ec.message());
        break;
      }
      continue;
    }
    if (e == EINVAL || e == EIO) {
      // A non-data TLS record is next (kernel TLS delivers those only with recvmsg + cmsg).
      if (!co_await copy_chunk(from, to, record(), kRecordBuffer, options, out, live)) {
        co_return;
      }
      continue;
    }
    fail(out, true, std::string("splice from socket: ") + std::strerror(e));
    break;
  }
}

asio::awaitable<void> copy_direction(base::ByteStream& from, base::ByteStream& to,
                                     const PumpOptions& options, DirectionResult& out,
                                     base::Counter* live, bool* session_aborted) {
  if (options.allow_splice && from.kernel_reads() && to.kernel_writes()) {
    co_await copy_splice(from, to, options, out, live);
  } else {
    co_await copy_userspace(from, to, options, out, live);
  }
  if (!out.clean_end && !*session_aborted) {
    // An error in one direction ends the session: abort both so the other direction wakes up.
    *session_aborted = true;
    out.failed_first = true;
    from.close();
    to.close();
  }
}

}  // namespace

std::string_view path_name(Path p) { return p == Path::kSplice ? "ktls+splice" : "userspace"; }

asio::awaitable<PumpResult> pump_both(base::ByteStream& a, base::ByteStream& b,
                                      const PumpOptions& options) {
  using namespace asio::experimental::awaitable_operators;
  PumpResult r;
  bool aborted = false;
  co_await (copy_direction(a, b, options, r.a_to_b, options.a_to_b_bytes, &aborted) &&
            copy_direction(b, a, options, r.b_to_a, options.b_to_a_bytes, &aborted));
  co_return r;
}

}  // namespace spiffe_tunnel::pump
