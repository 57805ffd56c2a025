// The YAML reading primitives of the configuration file: a Reader that knows the file's name,
// so that every error can say file:line:column, and reads scalars, lists and values through the
// parsers of values.h. Used by yaml_reader.cc only.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include "spiffe_tunnel/base/result.h"
#include "spiffe_tunnel/config/config.h"

namespace spiffe_tunnel::config {

using base::Error;
using base::make_error;
using base::Result;
using base::Status;

// Where a node was written, "file:line:column", or the file alone when yaml-cpp does not know.
inline std::string where_in(const std::string& origin, const YAML::Mark& m) {
  if (m.is_null()) {
    return origin;
  }
  return origin + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}

// Carries the file name so that every error can say file:line:column.
struct Reader {
  std::string origin;

  std::string where(const YAML::Node& n) const { return where_in(origin, n.Mark()); }
  Error fail(const YAML::Node& n, const std::string& what) const {
    return make_error(where(n) + ": " + what);
  }

  Result<std::string> scalar(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) {
      return fail(n, "\"" + key + "\" must be a single value");
    }
    return n.Scalar();
  }

  // A single value or a list of them; each entry keeps where it was written, prefixed to
  // `label`, so that an error points at the entry itself.
  Result<std::vector<Sourced>> list(const YAML::Node& n, const std::string& key,
                                    const std::string& label) const {
    std::vector<Sourced> out;
    if (n.IsScalar()) {
      out.push_back({n.Scalar(), where(n) + ": " + label});
      return out;
    }
    if (!n.IsSequence()) {
      return fail(n, "\"" + key + "\" must be a list");
    }
    for (const auto& item : n) {
      if (!item.IsScalar()) {
        return fail(item, "entries of \"" + key + "\" must be single values");
      }
      out.push_back({item.Scalar(), where(item) + ": " + label});
    }
    return out;
  }

  // An optional single value: leaves `out` alone when the key is absent.
  Status optional_scalar(const YAML::Node& n, const std::string& key, std::string& out) const {
    if (!n) {
      return {};
    }
    auto v = scalar(n, key);
    if (!v) {
      return v.error();
    }
    out = *v;
    return {};
  }

  // An optional value read through one of the parsers of values.h; an error reads
  // "<where>: <prefix><why>". Leaves `out` alone when the key is absent.
  template <typename T, typename Parse>
  Status value(const YAML::Node& n, const std::string& key, const std::string& prefix,
               Parse&& parse, T& out) const {
    if (!n) {
      return {};
    }
    auto text = scalar(n, key);
    if (!text) {
      return text.error();
    }
    auto v = parse(*text);
    if (!v) {
      return fail(n, prefix + v.error().message);
    }
    out = std::move(*v);
    return {};
  }

  // A file that must be readable now; the error points at where it was named.
  Status readable_file(const YAML::Node& n, const std::string& what,
                       const std::string& path) const {
    if (::access(path.c_str(), R_OK) != 0) {
      return fail(n, what + " " + path + ": " + std::strerror(errno));
    }
    return {};
  }

  Status only_keys(const YAML::Node& map, std::initializer_list<std::string_view> allowed,
                   const std::string& section) const {
    if (!map.IsMap()) {
      return fail(map, "\"" + section + "\" must be a mapping");
    }
    for (const auto& kv : map) {
      const std::string key = kv.first.Scalar();
      bool known = false;
      std::string list;
      for (auto a : allowed) {
        known = known || key == a;
        list += (list.empty() ? "" : ", ") + std::string(a);
      }
      if (!known) {
        return fail(kv.first, "unknown key \"" + key + "\" in " + section +
                                  " (expected one of: " + list + ")");
      }
    }
    return {};
  }
};

}  // namespace spiffe_tunnel::config
