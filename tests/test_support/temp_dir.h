#pragma once
// A fresh temporary directory for one test, removed with everything in it when the test ends.
// Shared by every module's tests (tests/ is on their include path).

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

#include <catch2/catch.hpp>

namespace spiffe_tunnel::testing {

class TempDir {
 public:
  // `prefix` names the directory under the system temp dir, e.g. /tmp/<prefix>-XXXXXX.
  explicit TempDir(std::string_view prefix = "st-test") {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The path of `name` inside the directory (nothing is created).
  std::string path(const std::string& name) const { return (path_ / name).string(); }
  // Writes `content` to `name` inside the directory and returns its path.
  std::string write(const std::string& name, const std::string& content) const {
    const auto p = path_ / name;
    std::ofstream(p) << content;
    return p.string();
  }
  // The directory itself.
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace spiffe_tunnel::testing
