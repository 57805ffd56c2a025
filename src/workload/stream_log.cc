#include "workload/stream_log.h"

#include <spdlog/spdlog.h>

namespace spiffe_tunnel::workload {
namespace {

using std::chrono::milliseconds;

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

std::string seconds_text(milliseconds d) {
  if (d < std::chrono::seconds(1)) {
    return std::to_string(d.count()) + "ms";
  }
  return fmt::format("{:.1f}s", static_cast<double>(d.count()) / 1000.0);
}

}  // namespace

std::string describe_status(const grpc::Status& status) {
  if (status.ok()) {
    return "the agent ended the stream";
  }
  return code_name(status.error_code()) +
         (status.error_message().empty() ? "" : ": " + status.error_message());
}

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

// --- FetchX509SVID -------------------------------------------------------------------------------

SvidStreamLog::SvidStreamLog(std::string address)
    : address_(std::move(address)), started_(std::chrono::steady_clock::now()) {}

void SvidStreamLog::updated(const X509Context& ctx) {
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

void SvidStreamLog::unchanged() {
  if (lost_) {
    spdlog::info("workload-api: reconnected to {}; identity unchanged", address_);
  } else {
    spdlog::debug("workload-api: unchanged update from {}", address_);
  }
  lost_ = false;
  last_failure_.reset();
}

void SvidStreamLog::discarded(const std::string& reason) {
  spdlog::warn("workload-api: discarding an update from {}, keeping the last good identity: {}",
               address_, reason);
}

void SvidStreamLog::ended(const grpc::Status& status, bool was_streaming, bool revoked,
                          milliseconds retry_in) {
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

// --- FetchX509Bundles ----------------------------------------------------------------------------

BundlesStreamLog::BundlesStreamLog(std::string address) : address_(std::move(address)) {}

void BundlesStreamLog::good_message() {
  ever_delivered_ = true;
  if (lost_) {
    spdlog::info("workload-api: FetchX509Bundles stream from {} is back", address_);
  }
  lost_ = false;
  last_failure_.reset();
}

void BundlesStreamLog::updated(const X509Context& ctx) {
  good_message();
  spdlog::info("workload-api: bundles update from {} (FetchX509Bundles): {}", address_,
               summarize(ctx));
}

void BundlesStreamLog::unchanged() {
  good_message();
  spdlog::debug("workload-api: FetchX509Bundles update from {} changes nothing", address_);
}

void BundlesStreamLog::held() {
  good_message();
  spdlog::debug("workload-api: holding bundles from {} (FetchX509Bundles) until the first "
                "identity",
                address_);
}

void BundlesStreamLog::discarded(const std::string& reason) {
  spdlog::warn("workload-api: discarding a FetchX509Bundles update from {}, keeping the last "
               "good bundles: {}",
               address_, reason);
}

void BundlesStreamLog::ended(const grpc::Status& status, bool was_streaming,
                             milliseconds retry_in) {
  const auto code = status.error_code();
  const std::string what = describe_status(status);
  const std::string retry = "retrying in " + seconds_text(retry_in);
  if (was_streaming) {
    spdlog::info("workload-api: lost the FetchX509Bundles stream from {} ({}); keeping the last "
                 "bundles, {}",
                 address_, what, retry);
  } else if (last_failure_ == code) {
    spdlog::debug("workload-api: FetchX509Bundles at {} still failing ({}); {}", address_, what,
                  retry);
  } else if (code == grpc::StatusCode::PERMISSION_DENIED && !ever_delivered_) {
    // Before the first identity FetchX509SVID says it (no identity yet); once more is noise.
    spdlog::debug("workload-api: {} refuses FetchX509Bundles to this workload ({}); {}", address_,
                  what, retry);
  } else if (code == grpc::StatusCode::PERMISSION_DENIED) {
    // Not a revocation: only FetchX509SVID speaks for this workload's identities.
    spdlog::info("workload-api: {} refuses FetchX509Bundles to this workload ({}); using the "
                 "bundles from FetchX509SVID, {}",
                 address_, what, retry);
  } else if (code == grpc::StatusCode::INVALID_ARGUMENT) {
    spdlog::error("workload-api: {} rejected the FetchX509Bundles request ({}); retrying about "
                  "every {}",
                  address_, what, seconds_text(retry_in));
  } else {
    // The FetchX509SVID stream reports the agent being unreachable.
    spdlog::debug("workload-api: FetchX509Bundles at {} failed ({}); {}", address_, what, retry);
  }
  lost_ = lost_ || was_streaming;
  last_failure_ = code;
}

void BundlesStreamLog::not_offered(const grpc::Status& status) {
  spdlog::info("workload-api: agent does not offer FetchX509Bundles; using bundles from "
               "FetchX509SVID ({} answered {})",
               address_, describe_status(status));
}

void BundlesStreamLog::restarted() {
  spdlog::debug("workload-api: restarting FetchX509Bundles after the revocation");
  ever_delivered_ = false;
  lost_ = false;
  last_failure_.reset();
}

}  // namespace spiffe_tunnel::workload
