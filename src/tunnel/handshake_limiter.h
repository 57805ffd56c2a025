#pragma once

// Handshakes in flight of one tunnel, counted globally and per source: IPv4 by address, IPv6 by
// its /64 (one host usually holds a whole /64), an IPv4-mapped IPv6 address as IPv4. Unix socket
// peers have no source key and count only globally. A connection takes a slot at accept and
// gives it back when its handshake ends, however it ends; the slot is what keeps handshakes from
// counting against max_connections. Thread-safe; slots may outlive the Tunnel.

#include <asio/ip/address.hpp>

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace spiffe_tunnel::tunnel {

class HandshakeLimiter : public std::enable_shared_from_this<HandshakeLimiter> {
 public:
  // A held slot; released on destruction or release().
  class Slot {
   public:
    Slot() = default;
    Slot(std::shared_ptr<HandshakeLimiter> owner, std::string key)
        : owner_(std::move(owner)), key_(std::move(key)) {}
    Slot(Slot&& o) noexcept = default;
    Slot& operator=(Slot&& o) noexcept;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { release(); }
    void release();

   private:
    std::shared_ptr<HandshakeLimiter> owner_;
    std::string key_;
  };

  // The refusal reason, or a slot.
  struct Admission {
    std::optional<Slot> slot;
    std::string_view refused;  // "global" or "per_source" when slot is empty
  };

  // 0 for `per_source`: no per-source limit.
  Admission try_acquire(const std::string& source_key, std::size_t global,
                        std::size_t per_source);
  std::size_t in_flight() const;
  std::size_t in_flight(const std::string& source_key) const;

  // The accounting key of a peer address: "v4:a.b.c.d" or "v6:<first 64 bits>/64".
  static std::string source_key(const asio::ip::address& address);

 private:
  void release(const std::string& key);
  mutable std::mutex mutex_;
  std::size_t total_ = 0;                                   // guarded by mutex_
  std::unordered_map<std::string, std::size_t> per_source_;  // guarded by mutex_
};

}  // namespace spiffe_tunnel::tunnel
