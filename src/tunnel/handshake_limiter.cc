#include "tunnel/handshake_limiter.h"

#include <cstdio>

namespace spiffe_tunnel::tunnel {

HandshakeLimiter::Slot& HandshakeLimiter::Slot::operator=(Slot&& o) noexcept {
  if (this != &o) {
    release();
    owner_ = std::move(o.owner_);
    key_ = std::move(o.key_);
  }
  return *this;
}

void HandshakeLimiter::Slot::release() {
  if (auto owner = std::move(owner_)) {
    owner->release(key_);
  }
}

HandshakeLimiter::Admission HandshakeLimiter::try_acquire(const std::string& source_key,
                                                          std::size_t global,
                                                          std::size_t per_source) {
  std::lock_guard lock(mutex_);
  if (total_ >= global) {
    return {std::nullopt, "global"};
  }
  if (!source_key.empty()) {
    std::size_t& n = per_source_[source_key];
    if (per_source != 0 && n >= per_source) {
      return {std::nullopt, "per_source"};
    }
    ++n;
  }
  ++total_;
  return {Slot(shared_from_this(), source_key), {}};
}

void HandshakeLimiter::release(const std::string& key) {
  std::lock_guard lock(mutex_);
  --total_;
  if (key.empty()) {
    return;
  }
  auto it = per_source_.find(key);
  if (it != per_source_.end() && --it->second == 0) {
    per_source_.erase(it);
  }
}

std::size_t HandshakeLimiter::in_flight() const {
  std::lock_guard lock(mutex_);
  return total_;
}

std::size_t HandshakeLimiter::in_flight(const std::string& source_key) const {
  std::lock_guard lock(mutex_);
  const auto it = per_source_.find(source_key);
  return it == per_source_.end() ? 0 : it->second;
}

std::string HandshakeLimiter::source_key(const asio::ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    return "v4:" + asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6()).to_string();
  }
  if (address.is_v4()) {
    return "v4:" + address.to_v4().to_string();
  }
  const auto bytes = address.to_v6().to_bytes();
  std::string key = "v6:";
  char hex[3];
  for (std::size_t i = 0; i < 8; ++i) {
    std::snprintf(hex, sizeof hex, "%02x", bytes[i]);
    key += hex;
  }
  return key + "/64";
}

}  // namespace spiffe_tunnel::tunnel
