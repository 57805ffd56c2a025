// How often a session reads the kernel's TLS record counters (the AEAD limit of kernel TLS
// directions, docs/ktls.md "AEAD usage limits"): every 4 MiB or 64 pump steps at the default
// limit, proportionally more often for low limits, never less than every step.

#include <catch2/catch.hpp>

#include "spiffe_tunnel/tunnel/tunnel_context.h"

using spiffe_tunnel::tunnel::key_check_cadence;

TEST_CASE("the kernel key check runs every 4 MiB at the default limit, sooner for low limits") {
  const auto at_default = key_check_cadence(uint64_t{1} << 23);
  CHECK(at_default.bytes == 4u << 20);  // 256 full records: 2^23 + 256 at most, far below 2^24.5
  CHECK(at_default.chunks == 64);
  const auto at_128 = key_check_cadence(128);
  CHECK(at_128.bytes == 8 * 16 * 1024);  // a sixteenth of the limit
  CHECK(at_128.chunks == 8);
  const auto at_2 = key_check_cadence(2);
  CHECK(at_2.bytes == 16 * 1024);
  CHECK(at_2.chunks == 1);
  CHECK(key_check_cadence(uint64_t{1} << 24).bytes == 4u << 20);  // capped
}
