// The checks an established session goes through after its handshake: the tunnel's policy after
// a reload (policy_changed), and its validity -- peer chain, own identity, age -- on every
// identity change and at the next moment one of them runs out.
#include <cassert>

#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/post.hpp>

#include "session.h"
#include "session_validity.h"
#include "spiffe_tunnel/base/log.h"

namespace spiffe_tunnel::tunnel {
namespace {

// A session wakes at least this often, so that a step of the system clock (the certificate
// times are wall-clock times, the timer is steady) is noticed within it.
constexpr std::chrono::minutes kLongestWait{10};

}  // namespace

void Session::recheck(std::shared_ptr<const TunnelContext> next) {
  asio::post(accepted_.get_executor(), [self = shared_from_this(), next = std::move(next)] {
    if (self->finished_) {
      return;
    }
    if (!self->authorized_) {
      self->pending_policy_ = next;  // the newest policy wins
      return;
    }
    self->apply_policy(next);
  });
}

void Session::recheck_identity() {
  asio::post(accepted_.get_executor(), [self = shared_from_this()] {
    // Before authorization the session checks the then-current snapshot itself (run()), which
    // is at least as new as the one that caused this post.
    if (!self->finished_ && self->authorized_) {
      self->check_validity();
    }
  });
}

void Session::check_validity() {
  if (finished_ || !timed_out_.empty()) {
    return;
  }
  const tls::ConnectionInfo& info = tls_->info();
  const auto now = info.context->clock().now();
  const auto age = std::chrono::steady_clock::now() - started_;
  SessionFacts facts;
  facts.peer_chain = info.peer.chain.get();
  assert(facts.peer_chain != nullptr);  // every established peer passed the verify callback
  facts.local_id = &info.context->svid().id;
  facts.verified_with = &info.context->snapshot();
  facts.accepted = now - std::chrono::duration_cast<std::chrono::system_clock::duration>(age);
  if (context_->limits.max_connection_age.count() > 0) {
    facts.max_age = context_->limits.max_connection_age;
  }
  const std::shared_ptr<const identity::Snapshot> current = context_->tls->snapshot();
  const Verdict v = check_session(facts, current.get(), now);
  if (!v.ok()) {
    // The verifier's sentences name the peer already; the others get it added.
    const std::string peer = info.peer.peer_id->str();
    end_session(end_reason_label(v.reason), v.detail.find(peer) != std::string::npos
                                                ? v.detail
                                                : v.detail + " (peer " + peer + ")");
    return;
  }
  const auto wait = std::min<std::chrono::system_clock::duration>(v.next_check - now,
                                                                   kLongestWait);
  validity_timer_.expires_after(std::chrono::ceil<std::chrono::milliseconds>(wait));
  validity_timer_.async_wait([self = shared_from_this()](asio::error_code ec) {
    if (!ec) {
      self->check_validity();
    }
  });
}

void Session::end_session(std::string_view label, const std::string& detail) {
  if (finished_ || !timed_out_.empty()) {
    return;
  }
  using base::TextStyle;
  const std::string peer = tls_->info().peer.peer_id->str();
  // The age limit is routine; every other reason is a change in trust an operator looks at.
  const auto level =
      label == "max_connection_age" ? spdlog::level::info : spdlog::level::warn;
  const base::LogField facts[] = {{"reason", label},
                                  {"peer_id", peer, TextStyle::kHidden},
                                  {"detail", detail, TextStyle::kColon}};
  base::log_line(level, {log_context(), "ending", facts});
  timed_out_ = std::string(label);  // the closed line's detail; the ending line says why
  abort_label_ = label;
  validity_timer_.cancel();
  close_all();
}

void Session::note_key_update(const tls::KeyUpdateEvent& e) {
  (e.sent ? context_->metrics->key_updates_sent : context_->metrics->key_updates_received).inc();
  if (!spdlog::should_log(spdlog::level::debug)) {
    return;
  }
  using base::TextStyle;
  const base::LogField facts[] = {{"direction", e.sent ? "sent" : "received"},
                                  {"update_requested", e.update_requested ? "yes" : "no"},
                                  {"records", e.records},
                                  {"generation", e.generation}};
  base::log_line(spdlog::level::debug, {log_context(), "key update", facts});
}

void Session::watch_kernel_keys(std::size_t bytes, uint64_t limit, KeyCheckCadence every) {
  key_check_bytes_ += bytes;
  ++key_check_chunks_;
  if (key_check_bytes_ < every.bytes && key_check_chunks_ < every.chunks) {
    return;
  }
  key_check_bytes_ = key_check_chunks_ = 0;
  if (auto spent = tls_->kernel_key_spent(limit); spent && timed_out_.empty() && !finished_) {
    // A clean end for the peer: close_notify before the close (the kernel frames it between
    // whatever records are in flight).
    tls_->send_kernel_close_notify_now();
    end_session("aead_limit", *spent);
  }
}

void Session::apply_policy(std::shared_ptr<const TunnelContext> next) {
  const spiffe::SpiffeId& peer = *tls_->info().peer.peer_id;
  const auto& authorizer = next->tls->options().authorizer;
  if (authorizer) {
    const policy::Decision d = authorizer->authorize(peer);
    if (!d.allowed) {
      end_by_policy(d.reason);
      return;
    }
  }
  if (next->opa) {
    asio::co_spawn(accepted_.get_executor(),
                   [self = shared_from_this(), next] { return self->ask_opa_again(next); },
                   asio::detached);
  }
}

asio::awaitable<void> Session::ask_opa_again(std::shared_ptr<const TunnelContext> next) {
  policy::OpaInput input{next->name, std::string(next->mode_name()), *tls_->info().peer.peer_id,
                         tls_->info().context->svid().id.str()};
  const policy::OpaDecision d = co_await next->opa->decide(std::move(input));
  if (finished_ || (d.allowed && !d.error)) {
    co_return;
  }
  // Fail closed, as at the handshake: no answer from OPA is no permission.
  end_by_policy(d.error ? "OPA unavailable: " + d.reason : "OPA: " + d.reason);
}

void Session::end_by_policy(const std::string& detail) {
  const std::string peer = tls_->info().peer.peer_id->str();
  end_session("policy_changed", "peer " + peer + " is no longer allowed: " + detail);
}

}  // namespace spiffe_tunnel::tunnel
