// FilesSource and its private key file: who may read it, and what is refused.

#include "spiffe_tunnel/workload/files_source.h"

#include <sys/stat.h>

#include <string>

#include <catch2/catch.hpp>

#include "spiffe/test_pki.h"
#include "test_support/temp_dir.h"

using namespace spiffe_tunnel;
using namespace spiffe_tunnel::spiffe::testing;
using Catch::Matchers::Contains;
using spiffe_tunnel::testing::TempDir;

namespace {

// An SVID of a.test written as PEM files: cert, key (with `key_mode`) and bundle.
struct WrittenSvid {
  TempDir dir;
  workload::FilesSourceOptions options;

  explicit WrittenSvid(mode_t key_mode) {
    const spiffe::Issuer root = make_root("a.test");
    const spiffe::X509Svid svid = make_svid(root, "spiffe://a.test/web");
    std::string chain;
    for (const auto& c : svid.chain) {
      chain += spiffe::certificate_to_pem(c.get());
    }
    options.cert_file = dir.write("svid.pem", chain);
    options.key_file = dir.write("svid.key", spiffe::private_key_to_pem(svid.key.get()));
    REQUIRE(::chmod(options.key_file.c_str(), key_mode) == 0);
    const std::string bundle = spiffe::certificate_to_pem(root.certificate());
    options.bundle_files = {{td_of("a.test"), dir.write("bundle.pem", bundle)}};
  }
};

}  // namespace

TEST_CASE("a key file only its owner may access is loaded") {
  for (mode_t mode : {0600, 0400}) {
    WrittenSvid files(mode);
    auto ctx = workload::FilesSource(files.options).load();
    INFO((ctx.ok() ? "" : ctx.error().message));
    REQUIRE(ctx.ok());
    CHECK(ctx->svids.front()->id.str() == "spiffe://a.test/web");
  }
}

TEST_CASE("a key file that group or others may access is refused, naming path and mode") {
  for (mode_t mode : {0644, 0640, 0604, 0620}) {
    WrittenSvid files(mode);
    auto ctx = workload::FilesSource(files.options).load();
    REQUIRE_FALSE(ctx.ok());
    char octal[8];
    std::snprintf(octal, sizeof(octal), "%04o", static_cast<unsigned>(mode));
    CHECK_THAT(ctx.error().message, Contains(files.options.key_file + " has mode " + octal));
    CHECK_THAT(ctx.error().message, Contains("chmod 600"));
    CHECK_THAT(ctx.error().message, Contains("key_permissions: warn"));
  }
}

TEST_CASE("with key permissions only warned about, an open key file is loaded") {
  WrittenSvid files(0644);
  files.options.strict_key_permissions = false;
  auto ctx = workload::FilesSource(files.options).load();
  INFO((ctx.ok() ? "" : ctx.error().message));
  CHECK(ctx.ok());
}

TEST_CASE("a key file that is not a regular file is refused") {
  WrittenSvid files(0600);
  files.options.key_file = files.dir.str();
  auto ctx = workload::FilesSource(files.options).load();
  REQUIRE_FALSE(ctx.ok());
  CHECK_THAT(ctx.error().message, Contains("not a regular file"));
}
