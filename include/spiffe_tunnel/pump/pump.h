#pragma once
// Moves bytes between the two ends of a session in both directions at once, until both
// directions have ended. End of stream on one side (TCP FIN or TLS close_notify) is passed on as
// a half-close of the other side; an error on either side aborts both. The pump knows nothing of
// TLS policy: it sees two ByteStreams and asks each whether the kernel owns its record layer.

#include <asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "spiffe_tunnel/base/byte_stream.h"
#include "spiffe_tunnel/base/metrics.h"

namespace spiffe_tunnel::pump {

// How one direction's bytes were moved.
enum class Path { kUserspace, kSplice };
std::string_view path_name(Path p);

struct DirectionResult {
  uint64_t bytes = 0;
  Path path = Path::kUserspace;
  bool clean_end = false;  // ended with end-of-stream, not an error
  std::string error;       // why it ended, when not clean
  bool failed_first = false;  // this direction's error ended the session
  bool failed_reading = false;  // the error was reading the source, not writing the destination
};

struct PumpResult {
  DirectionResult a_to_b;
  DirectionResult b_to_a;
};

// Large enough for one TLS record (16 KiB plaintext) and its header.
inline constexpr std::size_t kRecordBuffer = 16 * 1024 + 256;

struct PumpOptions {
  // Bytes moved per step on the userspace path, and the splice pipe size. No default: the
  // configuration owns it (64 KiB); 0 falls back to room for two TLS records.
  std::size_t buffer_size = 0;
  // Splice a direction when the kernel owns both its ends' record layers (plain TCP, or TLS
  // offloaded with kTLS). Otherwise, or when false, copy through userspace.
  bool allow_splice = true;
  // Called after every chunk moved, for idle tracking. May be empty.
  std::function<void()> on_activity;
  // Called with the size of every chunk moved, either direction, after on_activity (e.g. to
  // read a kernel TLS socket's record counters every few MiB). May be empty; may close both
  // ends, which ends the pump as an abort does.
  std::function<void(std::size_t)> on_chunk;
  // Raised by the bytes moved, as they move (one relaxed add per chunk or splice call), so that
  // byte counters rise while a session is open. May be null. The result's byte counts are kept
  // as well.
  base::Counter* a_to_b_bytes = nullptr;
  base::Counter* b_to_a_bytes = nullptr;
};

// Runs until both directions end. `a` and `b` must outlive the returned awaitable.
asio::awaitable<PumpResult> pump_both(base::ByteStream& a, base::ByteStream& b,
                                      const PumpOptions& options);

}  // namespace spiffe_tunnel::pump
