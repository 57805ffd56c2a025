#pragma once
// Shared scaffolding of the config tests: a temporary directory holding the identity files a
// "files" identity names, and helpers that load YAML text and return the Config or the error.

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

#include "spiffe_tunnel/config/config.h"
#include "test_support/temp_dir.h"

namespace spiffe_tunnel::config::testing {

using spiffe_tunnel::testing::TempDir;

// A TempDir with svid.pem, key.pem, bundle.pem and partner.json written.
struct IdentityFiles : TempDir {
  IdentityFiles() {
    for (const char* name : {"svid.pem", "key.pem", "bundle.pem", "partner.json"}) {
      write(name, "placeholder\n");  // validation only checks that the files are readable
    }
  }
};

// Replaces every "{dir}" in `text` with `dir`.
inline std::string with_dir(std::string text, const std::string& dir) {
  for (size_t pos; (pos = text.find("{dir}")) != std::string::npos;) {
    text.replace(pos, 5, dir);
  }
  return text;
}

// Loads and validates YAML text named "test.yaml"; the test fails unless it is valid.
inline Config load_ok(const std::string& text) {
  auto c = load_config_text(text, "test.yaml");
  INFO(text);
  INFO((c.ok() ? "" : c.error().message));
  REQUIRE(c.ok());
  return *c;
}

// The error of loading YAML text named "test.yaml"; the test fails if it loads or throws.
inline std::string error_of(const std::string& text) {
  std::string message;
  INFO(text);
  REQUIRE_NOTHROW([&] {
    auto c = load_config_text(text, "test.yaml");
    REQUIRE_FALSE(c.ok());
    message = c.error().message;
  }());
  return message;
}

inline const char* const kWorkloadApiIdentity =
    "identity:\n"
    "  workload_api: unix:///run/spire/agent.sock\n";

// Lines 3-7 of many error cases: a server tunnel "web" with no peer rule yet.
inline const std::string kWebServer =
    "tunnels:\n"
    "  - name: web\n"
    "    mode: server\n"
    "    listen: :8443\n"
    "    target: :8080\n";

}  // namespace spiffe_tunnel::config::testing
