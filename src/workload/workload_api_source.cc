#include "spiffe_tunnel/workload/workload_api_source.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cassert>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>

#include "workload.grpc.pb.h"
#include "workload/backoff.h"
#include "workload/endpoint.h"
#include "workload/stream_log.h"
#include "workload/x509_context_merger.h"
#include "workload/x509_responses.h"

namespace spiffe_tunnel::workload {
namespace {

using std::chrono::milliseconds;

constexpr char kEnvVar[] = "SPIFFE_ENDPOINT_SOCKET";
// SPIFFE Workload Endpoint §2: exactly one value, exactly "true", on every call.
constexpr char kSecurityHeader[] = "workload.spiffe.io";

// A digest of the whole response, to recognise a repeat without keeping a copy of the key.
std::string digest_of(const X509SVIDResponse& response) {
  std::string bytes(response.ByteSizeLong(), '\0');
  {
    google::protobuf::io::ArrayOutputStream array(bytes.data(), static_cast<int>(bytes.size()));
    google::protobuf::io::CodedOutputStream coded(&array);
    coded.SetSerializationDeterministic(true);  // map order
    response.SerializeWithCachedSizes(&coded);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return std::string(reinterpret_cast<char*>(md), len);
}

// Drops the key bytes from the received message once they are parsed.
void scrub_keys(X509SVIDResponse& response) {
  for (auto& svid : *response.mutable_svids()) {
    std::string* key = svid.mutable_x509_svid_key();
    OPENSSL_cleanse(key->data(), key->size());
  }
  response.Clear();
}

// The moment the first of a message's SVIDs expires: the reconnect backoff never waits past it.
std::chrono::system_clock::time_point earliest_not_after(const X509SvidMessage& message) {
  auto earliest = std::chrono::system_clock::time_point::max();
  for (const auto& svid : message.svids) {
    earliest = std::min(earliest, svid->not_after());
  }
  return earliest;
}

// Until `until`, 0 once it has passed; capped at a year so the cast cannot overflow.
milliseconds time_left(std::chrono::system_clock::time_point until) {
  const auto now = std::chrono::system_clock::now();
  return until <= now ? milliseconds(0)
                      : std::chrono::duration_cast<milliseconds>(
                            std::min(until - now, std::chrono::system_clock::duration(
                                                      std::chrono::hours(24 * 365))));
}

// A fresh channel per attempt. Channels to one address share a subchannel in gRPC's global pool,
// and with it gRPC's connection backoff (1 s growing 1.6x up to 120 s), so a new channel's call
// would wait out the backoff earned by earlier refused connects, up to minutes after the agent is
// back. gRPC's backoff is therefore held at our first delay; ours governs the schedule. (A private
// subchannel pool per channel instead leaks one socket per agent restart.)
std::unique_ptr<SpiffeWorkloadAPI::Stub> new_stub(const std::string& target,
                                                  milliseconds connect_backoff) {
  grpc::ChannelArguments args;
  const int ms = static_cast<int>(std::min<int64_t>(connect_backoff.count(), 60000));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, ms);
  return SpiffeWorkloadAPI::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

}  // namespace

// The two stream loops, each run by its own thread, and what they share under mutex_: the calls
// stop() cancels and the merger that builds the published context. Publishing happens under
// mutex_, so callbacks never overlap and keep the order in which contexts were built.
class WorkloadApiSource::Streams {
 public:
  Streams(const WorkloadApiOptions& options, const std::string& target)
      : options_(options), target_(target) {}

  // Before the threads start.
  void set_callbacks(SourceCallbacks callbacks) { callbacks_ = std::move(callbacks); }
  void run_svid_stream();
  void run_bundles_stream();
  // Cancels both calls in flight and wakes both threads from their backoff.
  void stop();

 private:
  // Registers the FetchX509SVID call that stop() cancels; false when stopping.
  bool begin_svid_call(grpc::ClientContext* call);
  // Unregisters it; false when stopping.
  bool end_svid_call();
  // Registers the FetchX509Bundles call that stop() and revoke() cancel, returning its epoch;
  // nullopt when stopping.
  std::optional<uint64_t> begin_bundles_call(grpc::ClientContext* call);
  enum class AfterBundlesCall { kStop, kRestart, kRetry };
  // Unregisters it and says what comes next: kRestart when a revocation made `epoch` stale.
  AfterBundlesCall end_bundles_call(uint64_t epoch);
  // Sleeps for `delay` unless stop() comes first; false when stopping.
  bool wait_for_retry(milliseconds delay);

  void publish_svids(X509SvidMessage message, SvidStreamLog& log);
  void publish_bundles(uint64_t epoch, BundleMap bundles, BundlesStreamLog& log);
  // Logs and publishes what the merger made of a message; called with mutex_ held.
  template <typename StreamLog>
  void deliver(std::optional<X509Context> ctx, StreamLog& log);
  void revoke(const std::string& reason);
  void report_failure(const grpc::Status& status);

  const WorkloadApiOptions& options_;
  const std::string& target_;
  SourceCallbacks callbacks_;  // set before the threads start, then only read

  std::mutex mutex_;
  std::condition_variable cv_;
  // Guarded by mutex_:
  bool stopping_ = false;
  grpc::ClientContext* svid_call_ = nullptr;     // the FetchX509SVID call in flight, if any
  grpc::ClientContext* bundles_call_ = nullptr;  // the FetchX509Bundles call in flight, if any
  // Counts revocations. A FetchX509Bundles call started before the latest one is stale: its
  // messages predate the revocation and are dropped, and the call is cancelled and restarted.
  uint64_t bundles_epoch_ = 0;
  X509ContextMerger merger_;
};

bool WorkloadApiSource::Streams::begin_svid_call(grpc::ClientContext* call) {
  std::lock_guard lock(mutex_);
  if (stopping_) {
    return false;
  }
  svid_call_ = call;
  return true;
}

bool WorkloadApiSource::Streams::end_svid_call() {
  std::lock_guard lock(mutex_);
  svid_call_ = nullptr;
  return !stopping_;
}

std::optional<uint64_t> WorkloadApiSource::Streams::begin_bundles_call(
    grpc::ClientContext* call) {
  // The epoch is read with the registration, so a revocation either comes first and is in the
  // epoch, or comes after and finds the call to cancel.
  std::lock_guard lock(mutex_);
  if (stopping_) {
    return std::nullopt;
  }
  bundles_call_ = call;
  return bundles_epoch_;
}

WorkloadApiSource::Streams::AfterBundlesCall WorkloadApiSource::Streams::end_bundles_call(
    uint64_t epoch) {
  std::lock_guard lock(mutex_);
  bundles_call_ = nullptr;
  if (stopping_) {
    return AfterBundlesCall::kStop;
  }
  return epoch == bundles_epoch_ ? AfterBundlesCall::kRetry : AfterBundlesCall::kRestart;
}

bool WorkloadApiSource::Streams::wait_for_retry(milliseconds delay) {
  std::unique_lock lock(mutex_);
  return !cv_.wait_for(lock, delay, [this] { return stopping_; });
}

void WorkloadApiSource::Streams::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (grpc::ClientContext* call : {svid_call_, bundles_call_}) {
      if (call != nullptr) {
        call->TryCancel();
      }
    }
  }
  cv_.notify_all();
}

template <typename StreamLog>
void WorkloadApiSource::Streams::deliver(std::optional<X509Context> ctx, StreamLog& log) {
  if (!ctx) {
    log.unchanged();
    return;
  }
  log.updated(*ctx);
  if (callbacks_.on_update) {
    callbacks_.on_update(std::move(*ctx));
  }
}

void WorkloadApiSource::Streams::publish_svids(X509SvidMessage message, SvidStreamLog& log) {
  std::lock_guard lock(mutex_);
  deliver(merger_.take_svids(std::move(message)), log);
}

void WorkloadApiSource::Streams::publish_bundles(uint64_t epoch, BundleMap bundles,
                                                 BundlesStreamLog& log) {
  std::lock_guard lock(mutex_);
  if (epoch != bundles_epoch_) {
    return;  // sent before a revocation; the restarted call sends a fresh snapshot
  }
  const bool held = !merger_.has_svids();
  auto ctx = merger_.take_bundles(std::move(bundles));
  if (held) {
    log.held();
    return;
  }
  deliver(std::move(ctx), log);
}

void WorkloadApiSource::Streams::revoke(const std::string& reason) {
  std::lock_guard lock(mutex_);
  // Everything the agent said for this workload is void, FetchX509Bundles included; restart
  // that stream so that its next message is a fresh snapshot (SPIRE does not resend an
  // unchanged one on an open stream).
  merger_.clear();
  ++bundles_epoch_;
  if (bundles_call_ != nullptr) {
    bundles_call_->TryCancel();
  }
  if (callbacks_.on_revoked) {
    callbacks_.on_revoked(reason);
  }
}

void WorkloadApiSource::Streams::report_failure(const grpc::Status& status) {
  std::lock_guard lock(mutex_);
  if (!callbacks_.on_failure) {
    return;
  }
  using Kind = SourceFailure::Kind;
  const auto code = status.error_code();
  callbacks_.on_failure({.kind = code == grpc::StatusCode::UNAVAILABLE         ? Kind::kUnreachable
                                 : code == grpc::StatusCode::PERMISSION_DENIED ? Kind::kNoIdentity
                                                                               : Kind::kOther,
                         .detail = describe_status(status)});
}

void WorkloadApiSource::Streams::run_svid_stream() {
  Backoff backoff(options_.initial_backoff, options_.max_backoff);
  SvidStreamLog log(options_.address);
  bool holding = false;     // identities delivered and not revoked since
  std::chrono::system_clock::time_point held_until;  // earliest notAfter of those identities
  std::string last_digest;  // of the response behind the identities we hold
  const WorkloadApiObserver& observer = options_.observer;
  for (bool first = true;; first = false) {
    if (!first && observer.on_reconnect) {
      observer.on_reconnect();
    }
    auto stub = new_stub(target_, options_.initial_backoff);
    grpc::ClientContext call;  // no deadline: the first message may take a while (SPIFFE.md §6)
    call.AddMetadata(kSecurityHeader, "true");
    if (!begin_svid_call(&call)) {
      return;
    }
    auto reader = stub->FetchX509SVID(&call, X509SVIDRequest());
    X509SVIDResponse response;
    bool streaming = false;  // this stream delivered a good message
    bool answered = false;   // this stream delivered any message
    while (reader->Read(&response)) {
      if (!answered && observer.on_connection) {
        observer.on_connection(true);
      }
      answered = true;
      std::string digest = digest_of(response);
      if (holding && digest == last_digest) {
        // SPIRE does not deduplicate (SPIFFE.md §6.10); an identical snapshot changes nothing.
        log.unchanged();
        scrub_keys(response);
        streaming = true;
        backoff.reset();
        continue;
      }
      auto message = parse_x509_svid_response(response);
      scrub_keys(response);
      if (!message) {
        log.discarded(message.error().message);
        continue;
      }
      holding = true;
      held_until = earliest_not_after(*message);
      last_digest = std::move(digest);
      streaming = true;
      backoff.reset();
      publish_svids(std::move(*message), log);
    }
    const grpc::Status status = reader->Finish();
    if (observer.on_connection) {
      observer.on_connection(false);
    }
    if (!end_svid_call()) {
      return;
    }
    const auto code = status.error_code();
    const bool revoked = holding && code == grpc::StatusCode::PERMISSION_DENIED;
    const milliseconds delay = code == grpc::StatusCode::INVALID_ARGUMENT ||
                                       code == grpc::StatusCode::UNIMPLEMENTED
                                   ? backoff.at_cap()
                                   : holding ? backoff.next_within(time_left(held_until))
                                             : backoff.next();
    log.ended(status, streaming, revoked, delay);
    report_failure(status);
    if (revoked) {
      // SPIFFE Workload API §5.2.1: the workload SHOULD stop using the identities.
      holding = false;
      last_digest.clear();
      revoke(options_.address + " answered " + describe_status(status) +
             ": this workload's registration entries were deleted or no longer match");
    }
    if (!wait_for_retry(delay)) {
      return;
    }
  }
}

void WorkloadApiSource::Streams::run_bundles_stream() {
  Backoff backoff(options_.initial_backoff, options_.max_backoff);
  BundlesStreamLog log(options_.address);
  for (;;) {
    auto stub = new_stub(target_, options_.initial_backoff);
    grpc::ClientContext call;
    call.AddMetadata(kSecurityHeader, "true");
    const std::optional<uint64_t> epoch = begin_bundles_call(&call);
    if (!epoch) {
      return;
    }
    auto reader = stub->FetchX509Bundles(&call, X509BundlesRequest());
    X509BundlesResponse response;
    bool streaming = false;  // this stream delivered a good message
    while (reader->Read(&response)) {
      // SPIFFE.md §4.3: a message that does not parse in full is dropped whole.
      auto bundles = parse_x509_bundles_response(response);
      response.Clear();
      if (!bundles) {
        log.discarded(bundles.error().message);
        continue;
      }
      streaming = true;
      backoff.reset();
      publish_bundles(*epoch, std::move(*bundles), log);
    }
    const grpc::Status status = reader->Finish();
    const AfterBundlesCall after = end_bundles_call(*epoch);
    if (after == AfterBundlesCall::kStop) {
      return;
    }
    if (after == AfterBundlesCall::kRestart) {
      log.restarted();
      continue;
    }
    const auto code = status.error_code();
    if (code == grpc::StatusCode::UNIMPLEMENTED) {
      // An agent without this RPC (or an older one): FetchX509SVID carries the bundles too.
      log.not_offered(status);
      return;
    }
    const milliseconds delay =
        code == grpc::StatusCode::INVALID_ARGUMENT ? backoff.at_cap() : backoff.next();
    log.ended(status, streaming, delay);
    if (!wait_for_retry(delay)) {
      return;
    }
  }
}

// --- WorkloadApiSource ---------------------------------------------------------------------------

base::Result<std::string> WorkloadApiSource::grpc_target(std::string_view address) {
  return endpoint_to_grpc_target(address);
}

base::Result<std::unique_ptr<WorkloadApiSource>> WorkloadApiSource::create(
    WorkloadApiOptions options) {
  bool from_env = false;
  if (options.address.empty()) {
    const char* env = std::getenv(kEnvVar);
    if (env == nullptr || *env == '\0') {
      return base::make_error(
          "no Workload API address: set identity.workload_api or --workload-api "
          "(unix:///path/to/agent.sock), or the SPIFFE_ENDPOINT_SOCKET environment variable");
    }
    options.address = env;
    from_env = true;
  }
  auto target = endpoint_to_grpc_target(options.address);
  if (!target) {
    return from_env ? target.error().wrap(kEnvVar) : target.error();
  }
  return std::unique_ptr<WorkloadApiSource>(
      new WorkloadApiSource(std::move(options), std::move(*target)));
}

WorkloadApiSource::WorkloadApiSource(WorkloadApiOptions options, std::string target)
    : options_(std::move(options)),
      target_(std::move(target)),
      streams_(std::make_unique<Streams>(options_, target_)) {}

WorkloadApiSource::~WorkloadApiSource() { stop(); }

std::string WorkloadApiSource::describe() const { return "workload-api " + options_.address; }

void WorkloadApiSource::start(SourceCallbacks callbacks) {
  assert(!svid_thread_.joinable() && !bundles_thread_.joinable());
  streams_->set_callbacks(std::move(callbacks));
  svid_thread_ = std::thread([this] { streams_->run_svid_stream(); });
  bundles_thread_ = std::thread([this] { streams_->run_bundles_stream(); });
}

void WorkloadApiSource::stop() {
  streams_->stop();
  for (std::thread* thread : {&svid_thread_, &bundles_thread_}) {
    if (thread->joinable()) {
      thread->join();
    }
  }
}

}  // namespace spiffe_tunnel::workload
