#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  // Create spdlog's registry on this thread before any test starts threads that log, as the
  // daemon does in main(). libspdlog is not built with TSan, so a first use from two threads at
  // once shows up as a race inside its lazy initialisation.
  spdlog::default_logger_raw();
  return Catch::Session().run(argc, argv);
}
