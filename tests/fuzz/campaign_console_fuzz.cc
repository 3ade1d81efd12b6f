// Fuzz target: a campaign reads what the guest writes on its serial console (the workload's
// acknowledgements, the kernel's reports) and a disk image the guest wrote. The input is the
// console log, written in two pieces (a partial line in between), then read as the records disk:
// reading must end, bounded, and the highest acknowledgement must be one the input holds.
#include "base/error.h"
#include "campaign/workload_records.h"

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>

using namespace immortal;
using namespace immortal::vmm;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string path = "/tmp/immortal-campaign-console-fuzz-" + std::to_string(::getpid());
  std::string text(reinterpret_cast<const char*>(data), size);
  std::size_t half = size / 2;
  GuestOutputWatch watch(path);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text.substr(0, half);
  watch.poll();
  std::ofstream(path, std::ios::binary | std::ios::app) << text.substr(half);
  watch.poll();
  if (watch.highest() && text.find(std::to_string(watch.highest())) == std::string::npos) __builtin_trap();
  (void)watch.longest_gap_ms(std::chrono::system_clock::time_point{});
  try {
    (void)check_records(path, 1, std::min<std::uint64_t>(watch.highest(), 4096));
  } catch (const Error&) {
  }
  return 0;
}
