#include "socket_activation.h"

#include <fcntl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <charconv>
#include <optional>
#include <cstdlib>
#include <string_view>

namespace spiffe_tunnel::app {
namespace {

constexpr int kFirstFd = 3;  // SD_LISTEN_FDS_START

std::optional<long> number(const char* text) {
  if (text == nullptr) {
    return std::nullopt;
  }
  const std::string_view s(text);
  long v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) {
    return std::nullopt;
  }
  return v;
}

std::vector<std::string> split_names(const char* text) {
  std::vector<std::string> names;
  if (text == nullptr) {
    return names;
  }
  std::string_view rest(text);
  for (;;) {
    const size_t colon = rest.find(':');
    names.emplace_back(rest.substr(0, colon));
    if (colon == std::string_view::npos) {
      return names;
    }
    rest.remove_prefix(colon + 1);
  }
}

}  // namespace

base::Result<ActivatedSockets> ActivatedSockets::take_from_environment() {
  const std::optional<long> pid = number(std::getenv("LISTEN_PID"));
  const char* fds_text = std::getenv("LISTEN_FDS");
  const std::optional<long> count = number(fds_text);
  const char* names_text = std::getenv("LISTEN_FDNAMES");
  std::vector<std::string> names = split_names(names_text);
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  ActivatedSockets out;
  if (!pid || *pid != static_cast<long>(::getpid())) {
    return out;  // not passed to this process
  }
  if (!count || *count < 0 || *count > 4096) {
    return base::make_error(std::string("socket activation: LISTEN_FDS=\"") +
                            (fds_text ? fds_text : "") + "\" is not a number of descriptors");
  }
  if (names_text == nullptr) {
    names.assign(*count, "unknown");  // systemd's name for a socket without FileDescriptorName=
  }
  if (names.size() != static_cast<size_t>(*count)) {
    return base::make_error("socket activation: LISTEN_FDNAMES has " +
                            std::to_string(names.size()) + " name(s) for " +
                            std::to_string(*count) + " descriptor(s)");
  }
  for (long i = 0; i < *count; ++i) {
    const int fd = kFirstFd + static_cast<int>(i);
    if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
      return base::make_error("socket activation: descriptor " + std::to_string(fd) +
                              " (\"" + names[i] + "\") is not open");
    }
    out.sockets_.push_back({std::move(names[i]), base::UniqueFd(fd), false});
  }
  return out;
}

base::Result<int> ActivatedSockets::take(const std::string& name) {
  Passed* found = nullptr;
  std::string all;
  for (auto& s : sockets_) {
    all += (all.empty() ? "" : ", ") + s.name;
    if (s.name == name) {
      if (found != nullptr) {
        return base::make_error("several passed sockets are named \"" + name +
                                "\"; a tunnel listens on exactly one: give each socket unit "
                                "its own FileDescriptorName=");
      }
      found = &s;
    }
  }
  if (sockets_.empty()) {
    return base::make_error("no sockets were passed to this process (LISTEN_FDS/LISTEN_PID not "
                            "set for it); start it through its .socket unit");
  }
  if (found == nullptr) {
    return base::make_error("no passed socket is named \"" + name + "\" (passed: " + all +
                            "); set FileDescriptorName=" + name + " in the .socket unit");
  }
  if (!found->fd.valid()) {  // closed by close_unused(): a tunnel added by a reload
    return base::make_error("the socket passed as \"" + name + "\" was closed at start because "
                            "no tunnel used it; restart the service to listen on it");
  }
  found->taken = true;
  return found->fd.get();
}

void ActivatedSockets::close_unused() {
  for (auto& s : sockets_) {
    if (!s.taken && s.fd.valid()) {
      spdlog::warn("socket activation: descriptor {} (\"{}\") is used by no tunnel; closing it",
                   s.fd.get(), s.name);
      s.fd.reset();
    }
  }
}

}  // namespace spiffe_tunnel::app
