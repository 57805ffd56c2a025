#include "workload/endpoint.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace spiffe_tunnel::workload {
namespace {

base::Error address_error(std::string_view address, std::string_view why) {
  return base::make_error("Workload API address \"" + std::string(address) + "\" " +
                          std::string(why));
}

bool is_hex(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

// The socket path is passed to gRPC unchanged; gRPC percent-decodes it like any URI path, so a
// stray '%' would silently name another file.
bool has_bad_percent_escape(std::string_view path) {
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '%' && (i + 2 >= path.size() || !is_hex(path[i + 1]) || !is_hex(path[i + 2]))) {
      return true;
    }
  }
  return false;
}

bool has_control_or_space(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f;
  });
}

base::Result<std::string> unix_target(std::string_view address, std::string_view rest) {
  // rest is what follows "unix:".
  if (!rest.starts_with("//")) {
    return address_error(address, "must be unix:///absolute/path (three slashes)");
  }
  rest.remove_prefix(2);
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash != 0) {
    return address_error(address,
                         "has a host part; a unix address names no host: write unix:///path");
  }
  const std::string_view path = rest;
  if (path.starts_with("//")) {
    // gRPC would read "unix://x" as a host name.
    return address_error(address, "has a path starting with '//'");
  }
  if (path.size() < 2 || path.ends_with('/')) {
    return address_error(address, "does not name a socket file");
  }
  if (has_bad_percent_escape(path)) {
    return address_error(address, "has a '%' that is not a %XX escape");
  }
  return "unix:" + std::string(path);
}

base::Result<std::string> tcp_target(std::string_view address, std::string_view rest) {
  if (!rest.starts_with("//")) {
    return address_error(address, "must be tcp://IP:port");
  }
  rest.remove_prefix(2);
  if (rest.find('/') != std::string_view::npos) {
    return address_error(address, "has a path; a tcp address is only tcp://IP:port");
  }
  if (rest.find('@') != std::string_view::npos) {
    return address_error(address, "has user information; a tcp address is only tcp://IP:port");
  }
  std::string_view host;
  std::string_view port;
  bool v6 = false;
  if (rest.starts_with('[')) {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      return address_error(address, "has an IPv6 literal without the closing ']'");
    }
    host = rest.substr(1, close - 1);
    rest.remove_prefix(close + 1);
    if (!rest.starts_with(':')) {
      return address_error(address, "has no port; write tcp://[IP]:port");
    }
    port = rest.substr(1);
    v6 = true;
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      return address_error(address, "has no port; write tcp://IP:port");
    }
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  const std::string host_str(host);
  unsigned char buf[sizeof(in6_addr)];
  if (inet_pton(v6 ? AF_INET6 : AF_INET, host_str.c_str(), buf) != 1) {
    return address_error(address, v6 ? "has an invalid IPv6 address"
                                     : "must name an IP address, not a host name (tcp://IP:port)");
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 ||
      value > 65535) {
    return address_error(address, "has an invalid port (1-65535)");
  }
  const std::string port_str = std::to_string(value);
  return v6 ? "ipv6:[" + host_str + "]:" + port_str : "ipv4:" + host_str + ":" + port_str;
}

}  // namespace

base::Result<std::string> endpoint_to_grpc_target(std::string_view address) {
  if (address.empty()) {
    return base::make_error("Workload API address is empty");
  }
  if (has_control_or_space(address)) {
    return address_error(address, "contains spaces or control characters");
  }
  if (address.find('?') != std::string_view::npos) {
    return address_error(address, "has a query ('?'), which the Workload API does not allow");
  }
  if (address.find('#') != std::string_view::npos) {
    return address_error(address, "has a fragment ('#'), which the Workload API does not allow");
  }
  const size_t colon = address.find(':');
  if (colon == std::string_view::npos) {
    return address_error(address, "has no scheme; use unix:///path or tcp://IP:port");
  }
  std::string scheme(address.substr(0, colon));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const std::string_view rest = address.substr(colon + 1);
  if (scheme == "unix") {
    return unix_target(address, rest);
  }
  if (scheme == "tcp") {
    return tcp_target(address, rest);
  }
  return address_error(address, "has scheme \"" + scheme + "\"; use unix:///path or tcp://IP:port");
}

}  // namespace spiffe_tunnel::workload
