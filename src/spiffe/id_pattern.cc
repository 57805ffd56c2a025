#include "spiffe_tunnel/spiffe/id_pattern.h"

#include <algorithm>

namespace spiffe_tunnel::spiffe {
namespace {

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < path.size()) {
    // path always begins with '/'
    size_t next = path.find('/', pos + 1);
    if (next == std::string_view::npos) {
      next = path.size();
    }
    out.emplace_back(path.substr(pos + 1, next - pos - 1));
    pos = next;
  }
  return out;
}

// Glob within one segment: '*' matches any run of characters.
bool glob_match(std::string_view pat, std::string_view s) {
  size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
  while (i < s.size()) {
    if (p < pat.size() && pat[p] == '*') {
      star = p++;
      mark = i;
    } else if (p < pat.size() && pat[p] == s[i]) {
      ++p;
      ++i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') {
    ++p;
  }
  return p == pat.size();
}

// Whether `pat` matches all of `segs`. A forward pass over the pattern keeps the set of segment
// positions reachable so far, so the cost is O(pattern segments x ID segments). Backtracking over
// each "**" instead is exponential in the number of "**"s, and the peer chooses the ID (up to
// 2048 bytes, so about a thousand segments).
bool match_segments(const std::vector<std::string>& pat, const std::vector<std::string>& segs) {
  std::vector<char> reachable(segs.size() + 1, 0);
  std::vector<char> next(segs.size() + 1, 0);
  reachable[0] = 1;
  for (const auto& p : pat) {
    std::fill(next.begin(), next.end(), 0);
    if (p == "**") {
      bool any = false;
      for (size_t s = 0; s <= segs.size(); ++s) {
        any = any || reachable[s] != 0;
        next[s] = any ? 1 : 0;
      }
    } else {
      for (size_t s = 0; s < segs.size(); ++s) {
        if (reachable[s] != 0 && glob_match(p, segs[s])) {
          next[s + 1] = 1;
        }
      }
    }
    reachable.swap(next);
  }
  return reachable[segs.size()] != 0;
}

}  // namespace

base::Result<IdPattern> IdPattern::parse(std::string_view text) {
  const std::string quoted = "\"" + std::string(text) + "\"";
  constexpr std::string_view kScheme = "spiffe://";
  if (text.substr(0, kScheme.size()) != kScheme) {
    return base::make_error("pattern " + quoted + " must start with \"spiffe://\"");
  }
  const size_t slash = text.find('/', kScheme.size());
  const std::string_view td_text = text.substr(kScheme.size(), slash - kScheme.size());
  if (td_text.find('*') != std::string_view::npos) {
    return base::make_error("pattern " + quoted +
                            ": wildcards are not allowed in the trust domain; list each trust "
                            "domain separately");
  }
  auto td = TrustDomain::parse(td_text);
  if (!td) {
    return td.error().wrap("pattern " + quoted);
  }
  IdPattern p;
  p.text_ = std::string(text);
  p.td_ = *td;
  if (slash == std::string_view::npos) {
    return p;  // trust domain ID only: matches spiffe://td exactly
  }
  p.segments_ = split_path(text.substr(slash));
  for (const auto& seg : p.segments_) {
    if (seg.empty()) {
      return base::make_error("pattern " + quoted + " has an empty path segment");
    }
    if (seg.find("**") != std::string::npos && seg != "**") {
      return base::make_error("pattern " + quoted + ": \"**\" must be a whole segment");
    }
    for (char c : seg) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' || c == '*';
      if (!ok) {
        return base::make_error("pattern " + quoted + " has character '" + std::string(1, c) +
                                "' in segment \"" + seg + "\" (allowed: a-z A-Z 0-9 . - _ *)");
      }
    }
  }
  return p;
}

bool IdPattern::matches(const SpiffeId& id) const {
  if (id.trust_domain() != *td_) {
    return false;
  }
  return match_segments(segments_, split_path(id.path()));
}

}  // namespace spiffe_tunnel::spiffe
