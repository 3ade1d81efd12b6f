// Fuzz target: what the introspection agent answers for `immortal ps|lsmod|dmesg`
// (vmm/control/live_introspection.h), as an agent that walked a hostile guest might. The first
// byte picks the part; accept_introspection_answer must accept or refuse (Error), and what it
// accepts must render as the CLI renders it.
#include "base/error.h"
#include "control/live_introspection.h"
#include "report/kernel_json.h"

#include <cstdint>
#include <string>
#include <string_view>

using namespace immortal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  static const char* parts[] = {"tasks", "modules", "dmesg"};
  std::string part = parts[data[0] % 3];
  std::string_view answer(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    auto got = vmm::accept_introspection_answer(part, answer);
    if (part == "tasks") (void)render_tasks(got.at("tasks"));
    else if (part == "modules") (void)render_modules(got.at("modules"));
    else (void)render_kernel_log(got.at("records"));
  } catch (const Error&) {
  }
  return 0;
}
