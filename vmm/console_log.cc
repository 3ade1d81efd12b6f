#include "console_log.h"

#include "base/io.h"

#include <fstream>
#include <iostream>

namespace immortal::vmm {

void ConsoleLog::pump() {
  if (!echo_) return;
  std::ifstream in(path_, std::ios::binary);
  if (!in) return;
  in.seekg(static_cast<std::streamoff>(offset_));
  char buf[8192];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    std::cout.write(buf, in.gcount());
    offset_ += static_cast<std::uint64_t>(in.gcount());
  }
  std::cout.flush();
}

std::string ConsoleLog::last_lines(std::size_t n) const {
  std::string out;
  for (const auto& line : immortal::last_lines(path_, n)) out += "  | " + line + "\n";
  return out.empty() ? "  (the console is empty)\n" : out;
}

}  // namespace immortal::vmm
