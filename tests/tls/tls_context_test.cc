// What the TLS context keeps of a connection's secrets.

#include "spiffe_tunnel/tls/tls_context.h"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

using namespace spiffe_tunnel;

TEST_CASE("a key log secret is decoded into a buffer sized once") {
  // 48 bytes (a SHA-384 suite): filled by growth, the vector would have re-allocated six times
  // and end with a capacity of 64.
  std::string hex;
  for (int i = 0; i < 48; ++i) {
    hex += "a5";
  }
  std::vector<unsigned char> secret;
  REQUIRE(tls::decode_traffic_secret(hex, secret));
  CHECK(secret.size() == 48);
  CHECK(secret.capacity() == 48);
  CHECK(secret == std::vector<unsigned char>(48, 0xa5));
}

TEST_CASE("a key log secret that is not hex leaves nothing behind") {
  std::vector<unsigned char> secret(32, 0x11);
  CHECK_FALSE(tls::decode_traffic_secret("a5a5zz", secret));
  CHECK(secret.empty());
}
