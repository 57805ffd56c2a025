#include "spiffe_tunnel/pump/pump.h"

#include <asio/experimental/awaitable_operators.hpp>

#include <memory>

namespace spiffe_tunnel::pump {
namespace {

asio::awaitable<void> copy_userspace(base::ByteStream& from, base::ByteStream& to,
                                     const PumpOptions& options, DirectionResult& out) {
  // One allocation per direction for the session's life; reads go straight into it and writes
  // come straight out of it.
  auto buf = std::make_unique_for_overwrite<char[]>(options.buffer_size);
  asio::error_code ec;
  for (;;) {
    const std::size_t n = co_await from.read_some({buf.get(), options.buffer_size}, ec);
    if (ec) {
      out.error = "read: " + ec.message();
      break;
    }
    if (n == 0) {
      co_await to.shutdown_write(ec);
      out.clean_end = !ec;
      if (ec) {
        out.error = "shutdown: " + ec.message();
      }
      break;
    }
    co_await to.write_all({buf.get(), n}, ec);
    if (ec) {
      out.error = "write: " + ec.message();
      break;
    }
    out.bytes += n;
    if (options.on_activity) {
      options.on_activity();
    }
  }
  if (!out.clean_end) {
    // An error in one direction ends the session: abort both so the other direction wakes up.
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
  co_await (copy_userspace(a, b, options, r.a_to_b) && copy_userspace(b, a, options, r.b_to_a));
  co_return r;
}

}  // namespace spiffe_tunnel::pump
