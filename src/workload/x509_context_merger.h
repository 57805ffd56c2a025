#pragma once
// X509ContextMerger: builds the X509Context that WorkloadApiSource publishes from the newest good
// message of each of its two streams, FetchX509SVID and FetchX509Bundles, and tells when that
// context changed. Every message is a complete snapshot of its own stream (SPIFFE.md §4.3), so a
// stream's newest message replaces all that stream said before; a trust domain it no longer
// names is gone unless the other stream still names it.
//
// - SVIDs come only from FetchX509SVID. Nothing is published until there is one: the daemon needs
//   an identity to serve, so bundles that arrive first are held.
// - Bundles are the union of both streams' newest messages (FetchX509SVID: each SVID's bundle
//   and federated_bundles). Where both name the same trust domain, the bundle of the stream whose
//   message changed last wins. A message identical to its stream's previous one is a repeat
//   (agents resend on every reconnect), not a change, and does not reorder the streams.
//
// Why the newest change wins: both streams are views of one agent cache and, with SPIRE, carry
// the same bundles once both have caught up (SPIFFE.md §6.5, §6.13). They differ only while one
// stream has delivered a change the other has not (a CA rotation, a federation added or dropped)
// or while one stream is down and stuck with what it last said; in each case the newer message is
// the agent's newer view. Making FetchX509Bundles authoritative instead would pin a stale root
// set whenever that stream is down or slow while FetchX509SVID delivers a CA rotation, and
// handshakes with peers holding SVIDs from the new CA would fail. Ignoring repeats keeps an
// agent restart, after which both streams resend in either order, from flipping bundles back.
//
// Not thread-safe; WorkloadApiSource calls it under its mutex.

#include <memory>
#include <optional>
#include <vector>

#include "spiffe_tunnel/spiffe/x509_svid.h"
#include "spiffe_tunnel/workload/x509_context.h"
#include "workload/x509_responses.h"

namespace spiffe_tunnel::workload {

class X509ContextMerger {
 public:
  // Takes the newest good FetchX509SVID message. Returns the context to publish, or nullopt when
  // it is the same as the one last published (a repeat changes nothing).
  std::optional<X509Context> take_svids(X509SvidMessage message);
  // Takes the newest good FetchX509Bundles message. Returns the context to publish, or nullopt
  // when it is the same as the one last published or there is no SVID yet (the bundles are held).
  std::optional<X509Context> take_bundles(BundleMap bundles);
  // Forgets both streams' messages and what was published: the SVIDs were revoked.
  void clear();

  bool has_svids() const { return !svids_.empty(); }

 private:
  std::optional<X509Context> publish_if_changed();
  BundleMap merged_bundles() const;

  std::vector<std::shared_ptr<const spiffe::X509Svid>> svids_;  // newest FetchX509SVID message
  BundleMap svid_stream_bundles_;                                // newest FetchX509SVID message
  BundleMap bundles_stream_bundles_;  // newest FetchX509Bundles message
  bool bundles_stream_newer_ = false;  // it changed after FetchX509SVID last did
  // What was published last, to recognise a repeat; empty svids = nothing published.
  std::vector<std::shared_ptr<const spiffe::X509Svid>> published_svids_;
  BundleMap published_bundles_;
};

}  // namespace spiffe_tunnel::workload
