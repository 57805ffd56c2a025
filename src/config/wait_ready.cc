#include "spiffe_tunnel/config/wait_ready.h"

#include "config/try.h"
#include "spiffe_tunnel/config/flags.h"
#include "spiffe_tunnel/config/values.h"

namespace spiffe_tunnel::config {
namespace {

using base::make_error;
using base::Result;
using base::Status;

Status read_identity(const WaitReadyFlags& f, WaitReadyConfig& c) {
  const bool identity_flags =
      !f.workload_api.empty() || !f.cert.empty() || !f.key.empty() || !f.bundles.empty();
  if (!f.config_file.empty()) {
    if (identity_flags) {
      return make_error("choose either -c FILE or --workload-api / --cert, --key, --bundle, "
                        "not both");
    }
    auto file = read_config_file(f.config_file);
    if (!file) {
      return file.error();
    }
    c.identity = file->identity;
    c.origin = f.config_file;
    return {};
  }
  TunnelFlags tf;
  tf.workload_api = f.workload_api;
  tf.cert = f.cert;
  tf.key = f.key;
  tf.bundles = f.bundles;
  tf.key_permissions = f.key_permissions;
  // Without identity flags: the Workload API at SPIFFE_ENDPOINT_SOCKET.
  tf.use_workload_api = !identity_flags;
  c.origin = "flags";
  return read_identity_flags(tf, c.identity);
}

Status read_wanted(const WaitReadyFlags& f, WaitReadyConfig& c) {
  if (!f.svid.empty() && !f.svid_hint.empty()) {
    return make_error("choose either --svid or --svid-hint, not both");
  }
  if (!f.svid.empty()) {
    auto id = spiffe::SpiffeId::parse(f.svid);
    if (!id) {
      return id.error().wrap("flag --svid");
    }
    c.svid_id = std::move(*id);
  }
  if (!f.svid_hint.empty()) {
    c.svid_hint = f.svid_hint;
  }
  for (const auto& text : f.trust_domains) {
    // A trust domain written as its SPIFFE ID ("spiffe://td") is accepted too.
    auto td = spiffe::TrustDomain::parse(text);
    if (!td) {
      return td.error().wrap("flag --trust-domain");
    }
    c.trust_domains.push_back(std::move(*td));
  }
  return {};
}

}  // namespace

Result<WaitReadyConfig> read_wait_ready_flags(const WaitReadyFlags& f) {
  WaitReadyConfig c;
  ST_TRY(read_identity(f, c));
  ST_TRY(read_wanted(f, c));
  if (!f.timeout.empty()) {
    auto t = parse_duration(f.timeout);
    if (!t) {
      return t.error().wrap("flag --timeout");
    }
    if (t->count() <= 0) {
      return make_error("flag --timeout: must be more than 0");
    }
    c.timeout = *t;
  }
  return c;
}

}  // namespace spiffe_tunnel::config
