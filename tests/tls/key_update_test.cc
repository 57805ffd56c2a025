// AEAD usage limits in the own TLS 1.3 record layer (RFC 8446 §5.5), against a real OpenSSL peer:
// with key_update_records at 4, our key is replaced every few records, and a peer that never
// re-keys by itself (OpenSSL does not) is asked to with update_requested once its key is spent.
// Every byte must arrive intact in both directions across hundreds of key generations.

#include <openssl/ssl.h>
#include <unistd.h>

#include <asio/co_spawn.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/post.hpp>
#include <asio/use_awaitable.hpp>

#include <future>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/tls/handshake.h"
#include "spiffe_tunnel/tls/records.h"
#include "spiffe_tunnel/tls/tls_stream.h"
#include "tls/openssl_peer.h"
#include "tls/test_tls.h"
#include "tls/tls_pair.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::tls::testing;

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // see record_layer_test.cc

namespace {

constexpr uint64_t kLimit = 4;

// The KeyUpdate messages an OpenSSL peer received, and how many of them asked for one back.
struct SeenByPeer {
  int key_updates = 0;
  int requested = 0;
};

void note_key_update(int write_p, int, int content_type, const void* buf, size_t len, SSL*,
                     void* arg) {
  const auto* m = static_cast<const unsigned char*>(buf);
  if (write_p == 0 && content_type == SSL3_RT_HANDSHAKE && len == 5 && m[0] == tls::kKeyUpdate) {
    auto* seen = static_cast<SeenByPeer*>(arg);
    ++seen->key_updates;
    seen->requested += m[4] == 1 ? 1 : 0;
  }
}

struct PeerResult {
  bool handshake = false;
  std::string received;
  bool wrote = false;
  SeenByPeer seen;
  std::string errors;
};

// Our side: writes `out` and reads `want` bytes at the same time, then closes.
asio::awaitable<void> exchange(tls::Handshake& handshake, const std::string& out, std::size_t want,
                               std::string& in, std::vector<tls::KeyUpdateEvent>& events) {
  using namespace asio::experimental::awaitable_operators;
  std::unique_ptr<tls::TlsStream> stream = co_await handshake.run();
  INFO(handshake.failure().detail);
  REQUIRE(stream);
  REQUIRE(stream->info().record_layer == tls::RecordLayer::kUserspace);
  stream->observe_key_updates([&](const tls::KeyUpdateEvent& e) { events.push_back(e); });
  asio::error_code wec;
  asio::error_code rec;
  auto writer = [&]() -> asio::awaitable<void> {
    // In pieces of various sizes, so that records of every size carry the data.
    for (std::size_t done = 0, step = 1; done < out.size() && !wec; step = step * 7 % 40000 + 1) {
      const std::size_t n = std::min(step, out.size() - done);
      co_await stream->write_all(std::string_view(out).substr(done, n), wec);
      done += n;
      // Lets the reader run: write_all returns at once while the socket takes everything.
      co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    }
  };
  auto reader = [&]() -> asio::awaitable<void> {
    char buf[3000];
    while (in.size() < want) {
      const std::size_t n = co_await stream->read_some({buf, sizeof(buf)}, rec);
      if (rec || n == 0) {
        co_return;
      }
      in.append(buf, n);
    }
  };
  co_await (writer() && reader());
  CHECK_FALSE(wec);
  INFO(stream->last_error());
  CHECK_FALSE(rec);
  co_await stream->shutdown_write(wec);
}

// Our end's handshake on `socket`; the stream reports its KeyUpdates into `events`.
asio::awaitable<std::unique_ptr<tls::TlsStream>> establish(
    asio::ip::tcp::socket socket, std::shared_ptr<const tls::TlsContext> context,
    std::vector<tls::KeyUpdateEvent>& events) {
  std::unique_ptr<tls::Handshake> h = handshake_on(std::move(socket), std::move(context));
  std::unique_ptr<tls::TlsStream> s = co_await h->run();
  INFO(h->failure().detail);
  REQUIRE(s);
  s->observe_key_updates([&events](const tls::KeyUpdateEvent& e) { events.push_back(e); });
  co_return s;
}

}  // namespace

TEST_CASE("the userspace record layer re-keys every key_update_records records, both ways") {
  Pki pki;
  const bool we_are_server = GENERATE(true, false);
  const std::string suite = GENERATE(std::string("TLS_AES_128_GCM_SHA256"),
                                     std::string("TLS_CHACHA20_POLY1305_SHA256"));
  auto options = interop_options(we_are_server, suite);
  options.key_update_records = kLimit;
  INFO((we_are_server ? "we are the server, " : "we are the client, ") << suite);
  Side side(options, snapshot_of({we_are_server ? pki.server : pki.client}, {&pki.example}));
  auto context = side.context();

  asio::io_context io;
  auto [a, b] = connected_pair(io);
  const int peer_fd = b.release();
  const std::string ours = pattern(3 * 1024 * 1024 + 17);
  const std::string theirs = pattern(2 * 1024 * 1024 + 5) + "end";

  auto peer_done = std::async(std::launch::async, [&, peer_fd] {
    PeerResult r;
    OpenSslPeer peer(!we_are_server, we_are_server ? *pki.client : *pki.server, peer_fd, suite);
    if (peer.ssl) {
      SSL_set_msg_callback(peer.ssl.get(), note_key_update);
      SSL_set_msg_callback_arg(peer.ssl.get(), &r.seen);
    }
    r.handshake = peer.ssl && SSL_do_handshake(peer.ssl.get()) == 1;
    if (r.handshake) {
      // OpenSSL never re-keys on its own: every KeyUpdate of its key is one we asked for. It
      // reads (and so sees our requests) between its writes.
      const std::size_t pieces = theirs.size() / 10000 + 1;
      const std::size_t share = ours.size() / pieces;
      for (std::size_t i = 0; i < pieces; ++i) {
        r.wrote = peer.write(std::string_view(theirs).substr(i * 10000, 10000));
        const std::size_t want = i + 1 < pieces ? share : ours.size() - r.received.size();
        const std::string got = peer.read_exactly(want);
        r.received += got;
        if (got.size() != want) {
          r.errors = "read stopped at piece " + std::to_string(i) + " after " +
                     std::to_string(r.received.size()) + " bytes: SSL error " +
                     std::to_string(SSL_get_error(peer.ssl.get(), 0)) + " ";
          break;
        }
      }
      SSL_shutdown(peer.ssl.get());
      // Until our close_notify: closing earlier could reset the connection under unread data.
      char byte;
      std::size_t k = 0;
      while (SSL_read_ex(peer.ssl.get(), &byte, 1, &k) == 1) {
      }
    }
    r.errors += base::drain_openssl_errors();
    ::close(peer_fd);
    return r;
  });

  std::unique_ptr<tls::Handshake> handshake = handshake_on(std::move(a), context);
  std::string in;
  std::vector<tls::KeyUpdateEvent> events;
  asio::co_spawn(io, exchange(*handshake, ours, theirs.size(), in, events), rethrow);
  run_bounded(io, std::chrono::seconds(60));
  const PeerResult r = peer_done.get();

  INFO("OpenSSL peer errors: " << r.errors);
  REQUIRE(r.handshake);
  CHECK(r.wrote);
  CHECK((in == theirs));
  CHECK((r.received == ours));

  int sent = 0;
  int sent_requested = 0;
  int received = 0;
  for (const auto& e : events) {
    if (e.sent) {
      CHECK(e.records <= kLimit);  // no key of ours protected more than key_update_records
    }
    sent += e.sent ? 1 : 0;
    sent_requested += e.sent && e.update_requested ? 1 : 0;
    received += e.sent ? 0 : 1;
  }
  INFO("sent " << sent << " (requested " << sent_requested << "), received " << received);
  // 3 MiB in full records alone is 192 records: a KeyUpdate for every 3 data records.
  CHECK(sent >= 192 / 3);
  // All but those sent after the peer's last read (the stream re-keys as soon as its key is
  // spent, and the peer stops reading at the last byte).
  CHECK(r.seen.key_updates >= sent - 2);
  CHECK(r.seen.key_updates <= sent);
  CHECK(r.seen.requested >= sent_requested - 1);
  // The peer is asked once per key of its; its answers lag behind our queued data, so how many
  // arrive before the end depends on timing (the next test pins that path down).
  CHECK(sent_requested >= 1);
  CHECK(received <= sent_requested);
  CHECK(sent > 0);
}

TEST_CASE("a peer that never re-keys is asked to, once per key, and keeps its keys short") {
  Pki pki;
  auto options = options_for(tls::Role::kServer, allow_any_verified());
  options.key_update_records = kLimit;
  Side side(options, snapshot_of({pki.server}, {&pki.example}));
  auto context = side.context();
  asio::io_context io;
  auto [a, b] = connected_pair(io);
  a.set_option(asio::ip::tcp::no_delay(true));  // ping-pong of small writes: no Nagle delays
  b.set_option(asio::ip::tcp::no_delay(true));
  const int peer_fd = b.release();
  constexpr int kRounds = 200;
  const std::string piece = pattern(16 * 1024);  // one full record per write

  auto peer_done = std::async(std::launch::async, [&, peer_fd] {
    PeerResult r;
    OpenSslPeer peer(false, *pki.client, peer_fd, "TLS_AES_128_GCM_SHA256");
    if (peer.ssl) {
      SSL_set_msg_callback(peer.ssl.get(), note_key_update);
      SSL_set_msg_callback_arg(peer.ssl.get(), &r.seen);
    }
    r.handshake = peer.ssl && SSL_do_handshake(peer.ssl.get()) == 1;
    // Ping-pong: a record of data, then our one-byte answer (and any KeyUpdate before it).
    for (int i = 0; r.handshake && i < kRounds; ++i) {
      r.wrote = peer.write(piece);
      r.received += peer.read_exactly(1);
    }
    r.errors += base::drain_openssl_errors();
    ::close(peer_fd);
    return r;
  });

  std::vector<tls::KeyUpdateEvent> events;
  std::string in;
  auto ours = [&]() -> asio::awaitable<void> {
    std::unique_ptr<tls::TlsStream> s = co_await establish(std::move(a), context, events);
    asio::error_code ec;
    char buf[4096];
    for (int i = 0; i < kRounds && !ec; ++i) {
      while (in.size() < piece.size() * (i + 1) && !ec) {
        const std::size_t n = co_await s->read_some({buf, sizeof(buf)}, ec);
        in.append(buf, n);
      }
      co_await s->write_all(std::string_view("."), ec);
    }
    CHECK_FALSE(ec);
  };
  asio::co_spawn(io, ours(), rethrow);
  run_bounded(io, std::chrono::seconds(30));
  const PeerResult r = peer_done.get();
  INFO("OpenSSL peer errors: " << r.errors);
  REQUIRE(r.handshake);
  CHECK(r.received == std::string(kRounds, '.'));
  std::string expected;
  for (int i = 0; i < kRounds; ++i) {
    expected += piece;
  }
  CHECK((in == expected));
  int requested = 0;
  int received = 0;
  for (const auto& e : events) {
    if (e.sent) {
      requested += e.update_requested ? 1 : 0;
      CHECK(e.records <= kLimit);
    } else {
      ++received;
      CHECK_FALSE(e.update_requested);
      // Asked after its 4th record; the answer comes with its next write.
      CHECK(e.records <= kLimit + 1);
    }
  }
  INFO("requested " << requested << ", received " << received);
  CHECK(received >= kRounds / static_cast<int>(kLimit + 1) - 1);
  CHECK(requested >= received);
  CHECK(requested <= received + 1);
  CHECK(r.seen.requested == requested);
}

TEST_CASE("no KeyUpdate follows our close_notify, however many records the peer sends after it") {
  Pki pki;
  auto options = interop_options(true, "TLS_AES_128_GCM_SHA256");
  options.key_update_records = kLimit;
  Side side(options, snapshot_of({pki.server}, {&pki.example}));
  auto context = side.context();
  asio::io_context io;
  auto [a, b] = connected_pair(io);
  const int peer_fd = b.release();
  const std::string piece = pattern(16 * 1024);
  constexpr int kRecords = 5 * kLimit;

  auto peer_done = std::async(std::launch::async, [&, peer_fd] {
    PeerResult r;
    OpenSslPeer peer(false, *pki.client, peer_fd, "TLS_AES_128_GCM_SHA256");
    r.handshake = peer.ssl && SSL_do_handshake(peer.ssl.get()) == 1;
    if (r.handshake) {
      char byte;
      std::size_t k = 0;
      // Our close_notify first (OpenSSL reads no further than that record) ...
      const bool closed = SSL_read_ex(peer.ssl.get(), &byte, 1, &k) == 0 &&
                          SSL_get_error(peer.ssl.get(), 0) == SSL_ERROR_ZERO_RETURN;
      // ... then the peer's records, well past the point where we would ask it to re-key.
      for (int i = 0; closed && i < kRecords; ++i) {
        r.wrote = peer.write(piece);
      }
      // Nothing of ours after close_notify: the next bytes on the socket are its end.
      char rest[64];
      r.received = closed ? std::string(rest, std::max<ssize_t>(::recv(peer_fd, rest, 64, 0), 0))
                          : "no close_notify";
    }
    ::close(peer_fd);
    return r;
  });

  std::size_t got = 0;
  std::vector<tls::KeyUpdateEvent> events;
  auto ours = [&]() -> asio::awaitable<void> {
    std::unique_ptr<tls::TlsStream> s = co_await establish(std::move(a), context, events);
    asio::error_code ec;
    co_await s->shutdown_write(ec);
    REQUIRE_FALSE(ec);
    char buf[16384];
    while (got < piece.size() * kRecords && !ec) {
      got += co_await s->read_some({buf, sizeof(buf)}, ec);
    }
    s->close();  // the peer's recv() sees the end
  };
  asio::co_spawn(io, ours(), rethrow);
  run_bounded(io, std::chrono::seconds(30));
  const PeerResult r = peer_done.get();
  REQUIRE(r.handshake);
  CHECK(r.wrote);
  CHECK(got == piece.size() * kRecords);
  CHECK(r.received.empty());
  CHECK(events.empty());
}
