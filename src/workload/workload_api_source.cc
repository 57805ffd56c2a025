#include "spiffe_tunnel/workload/workload_api_source.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <grpcpp/grpcpp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <cassert>
#include <cstdlib>
#include <optional>

#include "workload.grpc.pb.h"
#include "workload/backoff.h"
#include "workload/endpoint.h"
#include "workload/x509_svid_response.h"

namespace spiffe_tunnel::workload {
namespace {

using std::chrono::milliseconds;

constexpr char kEnvVar[] = "SPIFFE_ENDPOINT_SOCKET";
// SPIFFE Workload Endpoint §2: exactly one value, exactly "true", on every call.
constexpr char kSecurityHeader[] = "workload.spiffe.io";
// While no identity has arrived, one hint for the operator after this long.
constexpr auto kStartupHintAfter = std::chrono::seconds(30);

std::string code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "Cancelled";
    case grpc::StatusCode::UNKNOWN: return "Unknown";
    case grpc::StatusCode::INVALID_ARGUMENT: return "InvalidArgument";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DeadlineExceeded";
    case grpc::StatusCode::NOT_FOUND: return "NotFound";
    case grpc::StatusCode::PERMISSION_DENIED: return "PermissionDenied";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "ResourceExhausted";
    case grpc::StatusCode::UNIMPLEMENTED: return "Unimplemented";
    case grpc::StatusCode::INTERNAL: return "Internal";
    case grpc::StatusCode::UNAVAILABLE: return "Unavailable";
    case grpc::StatusCode::UNAUTHENTICATED: return "Unauthenticated";
    default: return "code " + std::to_string(static_cast<int>(code));
  }
}

std::string describe_status(const grpc::Status& s) {
  if (s.ok()) {
    return "the agent ended the stream";
  }
  return code_name(s.error_code()) + (s.error_message().empty() ? "" : ": " + s.error_message());
}

std::string seconds_text(milliseconds d) {
  if (d < std::chrono::seconds(1)) {
    return std::to_string(d.count()) + "ms";
  }
  return fmt::format("{:.1f}s", static_cast<double>(d.count()) / 1000.0);
}

// "2 SVID(s) spiffe://a/x (hint internal), spiffe://a/y; bundles a, b", for logs.
std::string summarize(const X509Context& ctx) {
  std::string out = std::to_string(ctx.svids.size()) + " SVID(s) ";
  for (size_t i = 0; i < ctx.svids.size(); ++i) {
    const auto& s = *ctx.svids[i];
    out += (i == 0 ? "" : ", ") + s.id.str() + (s.hint.empty() ? "" : " (hint " + s.hint + ")");
  }
  out += "; bundles";
  const auto tds = ctx.bundles.trust_domains();
  for (size_t i = 0; i < tds.size(); ++i) {
    out += (i == 0 ? " " : ", ") + tds[i].name();
  }
  return out;
}

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

// Logs the stream's state changes once each (first identity, lost, reconnected, a new kind of
// failure); repeats of the same failure go to debug.
class LinkLog {
 public:
  explicit LinkLog(std::string address)
      : address_(std::move(address)), started_(std::chrono::steady_clock::now()) {}

  void updated(const X509Context& ctx) {
    if (!ever_updated_) {
      spdlog::info("workload-api: first identity from {}: {}", address_, summarize(ctx));
    } else if (lost_) {
      spdlog::info("workload-api: reconnected to {}: {}", address_, summarize(ctx));
    } else {
      spdlog::info("workload-api: identity update from {}: {}", address_, summarize(ctx));
    }
    ever_updated_ = true;
    lost_ = false;
    last_failure_.reset();
  }

  // A repeat of the identity already held, e.g. the first message after an agent restart.
  void unchanged() {
    if (lost_) {
      spdlog::info("workload-api: reconnected to {}; identity unchanged", address_);
    } else {
      spdlog::debug("workload-api: unchanged update from {}", address_);
    }
    lost_ = false;
    last_failure_.reset();
  }

  void discarded(const std::string& reason) {
    spdlog::warn("workload-api: discarding an update from {}, keeping the last good identity: {}",
                 address_, reason);
  }

  void ended(const grpc::Status& status, bool was_streaming, bool revoked, milliseconds retry_in) {
    const auto code = status.error_code();
    const std::string what = describe_status(status);
    const std::string retry = "retrying in " + seconds_text(retry_in);
    if (revoked) {
      spdlog::warn("workload-api: {} revoked this workload's identities ({}); {}", address_, what,
                   retry);
    } else if (was_streaming) {
      spdlog::warn("workload-api: lost the stream from {} ({}); serving the last identity, {}",
                   address_, what, retry);
    } else if (last_failure_ == code) {
      spdlog::debug("workload-api: {} still failing ({}); {}", address_, what, retry);
    } else if (code == grpc::StatusCode::INVALID_ARGUMENT) {
      spdlog::error(
          "workload-api: {} rejected the request ({}): it refused the security header or request, "
          "which retrying will not fix; is this address a SPIFFE Workload API? Not giving up: "
          "retrying about every {}",
          address_, what, seconds_text(retry_in));
    } else if (code == grpc::StatusCode::UNIMPLEMENTED) {
      spdlog::error(
          "workload-api: {} does not serve the SPIFFE Workload API ({}); wrong socket, or the "
          "agent has disable_workload_api set? Not giving up: retrying about every {}",
          address_, what, seconds_text(retry_in));
    } else if (code == grpc::StatusCode::PERMISSION_DENIED) {
      spdlog::info("workload-api: {} has no identity for this workload yet ({}); is it "
                   "registered? {}",
                   address_, what, retry);
    } else {
      spdlog::warn("workload-api: {} unavailable ({}); {}", address_, what, retry);
    }
    lost_ = lost_ || was_streaming || revoked;
    last_failure_ = code;
    if (!ever_updated_ && !hinted_ &&
        std::chrono::steady_clock::now() - started_ >= kStartupHintAfter) {
      hinted_ = true;
      spdlog::warn("workload-api: no identity from {} after {}s; is the agent running and is "
                   "this workload registered?",
                   address_, kStartupHintAfter.count());
    }
  }

 private:
  const std::string address_;
  const std::chrono::steady_clock::time_point started_;
  bool ever_updated_ = false;
  bool lost_ = false;  // the stream ended since the last good message
  bool hinted_ = false;
  std::optional<grpc::StatusCode> last_failure_;
};

}  // namespace

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
    : options_(std::move(options)), target_(std::move(target)) {}

WorkloadApiSource::~WorkloadApiSource() { stop(); }

std::string WorkloadApiSource::describe() const { return "workload-api " + options_.address; }

void WorkloadApiSource::start(SourceCallbacks callbacks) {
  assert(!thread_.joinable());
  callbacks_ = std::move(callbacks);
  thread_ = std::thread([this] { run(); });
}

void WorkloadApiSource::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    if (call_ != nullptr) {
      call_->TryCancel();
    }
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

bool WorkloadApiSource::begin_call(grpc::ClientContext* call) {
  std::lock_guard lock(mutex_);
  if (stopping_) {
    return false;
  }
  call_ = call;
  return true;
}

void WorkloadApiSource::end_call() {
  std::lock_guard lock(mutex_);
  call_ = nullptr;
}

bool WorkloadApiSource::wait_for_retry(milliseconds delay) {
  std::unique_lock lock(mutex_);
  return !cv_.wait_for(lock, delay, [this] { return stopping_; });
}

void WorkloadApiSource::run() {
  Backoff backoff(options_.initial_backoff, options_.max_backoff);
  LinkLog log(options_.address);
  bool holding = false;     // identities delivered and not revoked since
  std::string last_digest;  // of the response behind the identities we hold
  for (;;) {
    // A fresh channel per attempt: gRPC's own reconnect backoff (up to 120s) would otherwise
    // stack on ours and delay recovery after an agent restart.
    auto stub = SpiffeWorkloadAPI::NewStub(
        grpc::CreateChannel(target_, grpc::InsecureChannelCredentials()));
    grpc::ClientContext call;  // no deadline: the first message may take a while (SPIFFE.md §6)
    call.AddMetadata(kSecurityHeader, "true");
    if (!begin_call(&call)) {
      return;
    }
    auto reader = stub->FetchX509SVID(&call, X509SVIDRequest());
    X509SVIDResponse response;
    bool streaming = false;  // this stream delivered a good message
    while (reader->Read(&response)) {
      std::string digest = digest_of(response);
      if (holding && digest == last_digest) {
        // SPIRE does not deduplicate (SPIFFE.md §6.10); an identical snapshot changes nothing.
        log.unchanged();
        scrub_keys(response);
        streaming = true;
        backoff.reset();
        continue;
      }
      auto ctx = parse_x509_svid_response(response);
      scrub_keys(response);
      if (!ctx) {
        log.discarded(ctx.error().message);
        continue;
      }
      log.updated(*ctx);
      holding = true;
      last_digest = std::move(digest);
      streaming = true;
      backoff.reset();
      if (callbacks_.on_update) {
        callbacks_.on_update(std::move(*ctx));
      }
    }
    const grpc::Status status = reader->Finish();
    end_call();
    const auto code = status.error_code();
    const bool revoked = holding && code == grpc::StatusCode::PERMISSION_DENIED;
    const milliseconds delay = code == grpc::StatusCode::INVALID_ARGUMENT ||
                                       code == grpc::StatusCode::UNIMPLEMENTED
                                   ? backoff.at_cap()
                                   : backoff.next();
    {
      std::lock_guard lock(mutex_);
      if (stopping_) {
        return;
      }
    }
    log.ended(status, streaming, revoked, delay);
    if (revoked) {
      // SPIFFE Workload API §5.2.1: the workload SHOULD stop using the identities.
      holding = false;
      last_digest.clear();
      if (callbacks_.on_revoked) {
        callbacks_.on_revoked(options_.address + " answered " + describe_status(status) +
                              ": this workload's registration entries were deleted or no "
                              "longer match");
      }
    }
    if (!wait_for_retry(delay)) {
      return;
    }
  }
}

}  // namespace spiffe_tunnel::workload
