#include "spiffe_tunnel/spiffe/spiffe_id.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>

namespace spiffe_tunnel::spiffe {
namespace {

using base::Error;
using base::Result;

constexpr std::string_view kScheme = "spiffe://";
// SPIFFE-ID.md §2.3 caps the trust domain at 255 bytes (the RFC 3986 host limit) and requires
// IDs up to 2048 bytes to be accepted. Both limits are enforced strictly (SPIFFE.md §1.2, §1.4).
constexpr size_t kMaxTrustDomainBytes = 255;
constexpr size_t kMaxIdBytes = 2048;
// Inputs are quoted in error messages; an over-long one is cut so a log line stays readable.
constexpr size_t kMaxQuotedBytes = 120;

bool is_trust_domain_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

bool is_path_char(char c) {
  return is_trust_domain_char(c) || (c >= 'A' && c <= 'Z');
}

// Quotes untrusted text for an error message: non-printable bytes become \xNN so a peer cannot
// inject control characters into logs, and long inputs are shortened.
std::string quote(std::string_view text) {
  std::string out = "\"";
  const size_t shown = text.size() > kMaxQuotedBytes ? kMaxQuotedBytes : text.size();
  for (size_t i = 0; i < shown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (shown < text.size()) {
    out += "...";
  }
  out += '"';
  return out;
}

// Names one offending byte: 'E' for printable ASCII, byte 0xNN otherwise.
std::string describe_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u < 0x20 || u >= 0x7f) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "byte 0x%02x", u);
    return buf;
  }
  return std::string("'") + c + "'";
}

Error not_an_id(std::string_view text, std::string_view reason) {
  return Error{quote(text) + " is not a SPIFFE ID: " + std::string(reason)};
}

Error not_a_trust_domain(std::string_view text, std::string_view reason) {
  return Error{quote(text) + " is not a trust domain name: " + std::string(reason)};
}

// Returns "" when `name` is a valid trust domain name, else the reason it is not, phrased with
// `subject` ("trust domain" inside an ID, "it" for a bare name).
std::string trust_domain_problem(std::string_view name, std::string_view subject) {
  const std::string who(subject);
  if (name.empty()) {
    return who + " is missing";
  }
  for (char c : name) {
    if (!is_trust_domain_char(c)) {
      std::string reason = who + " contains " + describe_char(c) + " (allowed: a-z 0-9 . - _)";
      // URI parts that the SPIFFE-ID standard forbids get a hint (SPIFFE-ID.md §2.1).
      if (c == ':') {
        reason += "; a port is not allowed";
      } else if (c == '@') {
        reason += "; userinfo is not allowed";
      }
      return reason;
    }
  }
  if (name.size() > kMaxTrustDomainBytes) {
    return who + " is " + std::to_string(name.size()) + " bytes long (at most " +
           std::to_string(kMaxTrustDomainBytes) + " allowed)";
  }
  return "";
}

// Returns "" when `path` is empty or a valid "/seg/seg" path, else the reason it is not.
std::string path_problem(std::string_view path) {
  if (path.empty()) {
    return "";
  }
  // The caller splits at the first '/', so `path` always starts with one.
  size_t start = 1;
  while (true) {
    const size_t end = std::min(path.find('/', start), path.size());
    const std::string_view segment = path.substr(start, end - start);
    if (segment.empty()) {
      return end == path.size() ? "path has a trailing slash"
                                : "path has an empty segment (\"//\")";
    }
    if (segment == "." || segment == "..") {
      return "path has a \"" + std::string(segment) + "\" segment";
    }
    for (char c : segment) {
      if (!is_path_char(c)) {
        std::string reason = "path contains " + describe_char(c) + " (allowed: a-z A-Z 0-9 . - _)";
        if (c == '%') {
          reason += "; percent-encoding is not allowed";
        } else if (c == '?' || c == '#') {
          reason += "; query and fragment are not allowed";
        }
        return reason;
      }
    }
    if (end == path.size()) {
      return "";
    }
    start = end + 1;
  }
}

// Explains a missing or wrong "spiffe://" prefix as precisely as the input allows.
std::string scheme_problem(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    return "it does not start with \"spiffe://\"";
  }
  const std::string_view scheme = text.substr(0, colon);
  if (scheme != "spiffe") {
    std::string lower(scheme);
    for (char& c : lower) {
      if (c >= 'A' && c <= 'Z') {
        c = static_cast<char>(c - 'A' + 'a');
      }
    }
    if (lower == "spiffe") {
      return "the scheme must be lowercase \"spiffe://\"";
    }
    return "the scheme is \"" + std::string(scheme) + "\", not \"spiffe\"";
  }
  return "missing \"//\" after \"spiffe:\"";
}

}  // namespace

base::Result<TrustDomain> TrustDomain::parse(std::string_view text) {
  // Same split as go-spiffe's TrustDomainFromString: anything that looks like a URI is parsed as
  // a SPIFFE ID, so "Spiffe://x" gets the scheme error rather than a charset error.
  if (text.find(":/") != std::string_view::npos) {
    auto id = SpiffeId::parse(text);
    if (!id.ok()) {
      return id.error();
    }
    return id->trust_domain();
  }
  if (text.empty()) {
    return not_a_trust_domain(text, "it is empty");
  }
  const std::string problem = trust_domain_problem(text, "it");
  if (!problem.empty()) {
    return not_a_trust_domain(text, problem);
  }
  return TrustDomain(std::string(text));
}

base::Result<SpiffeId> SpiffeId::parse(std::string_view text) {
  if (text.empty()) {
    return not_an_id(text, "it is empty");
  }
  if (text.substr(0, kScheme.size()) != kScheme) {
    return not_an_id(text, scheme_problem(text));
  }
  const std::string_view rest = text.substr(kScheme.size());
  const size_t slash = rest.find('/');
  const std::string_view td = rest.substr(0, slash);
  const std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);

  std::string problem = trust_domain_problem(td, "trust domain");
  if (problem.empty()) {
    problem = path_problem(path);
  }
  if (problem.empty() && text.size() > kMaxIdBytes) {
    problem = "it is " + std::to_string(text.size()) + " bytes long (at most " +
              std::to_string(kMaxIdBytes) + " allowed)";
  }
  if (!problem.empty()) {
    return not_an_id(text, problem);
  }
  return SpiffeId(TrustDomain(std::string(td)), std::string(path));
}

}  // namespace spiffe_tunnel::spiffe
