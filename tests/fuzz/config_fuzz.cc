// Fuzzes the configuration loader: YAML text → typed Config (every value parsed and
// range-checked, errors with line:column) → validate() (the cross-field rules). Identity files
// named by the input are looked up on the real filesystem, read-only; the loader never writes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "spiffe_tunnel/config/config.h"

using namespace spiffe_tunnel;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto draft = config::read_config_text(text, "fuzz.yaml");
  if (!draft.ok()) {
    if (draft.error().message.empty()) std::abort();  // every refusal says why
    return 0;
  }
  (void)config::validate(*draft);
  (void)config::finalize(std::move(*draft), config::Overrides{});
  return 0;
}
