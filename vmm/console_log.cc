#include "console_log.h"

#include "base/budgets.h"
#include "base/io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iostream>

namespace immortal::vmm {

namespace {
constexpr std::uint64_t kKeptTail = 1 << 20;  // what console.log.1 keeps of a full log
}  // namespace

void ConsoleLog::limit_size(std::uint64_t budget) {
  struct stat st {};
  if (path_.empty() || ::stat(path_.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) <= budget) return;
  std::string tail = read_tail(path_, kKeptTail);
  std::string old = path_ + ".1";
  int fd = ::open(old.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd >= 0) {
    try {
      write_all(fd, tail);
    } catch (const std::exception&) {
    }
    ::close(fd);
  }
  // QEMU writes with O_APPEND: it goes on at the new end. What it wrote between the copy and
  // here is lost, a few bytes at most.
  if (::truncate(path_.c_str(), 0) == 0) offset_ = 0;
}

void ConsoleLog::pump() {
  auto now = std::chrono::steady_clock::now();
  if (now - checked_ >= std::chrono::seconds(1)) {
    checked_ = now;
    limit_size(budget::kConsoleLogBytes);
  }
  if (!echo_) return;
  std::ifstream in(path_, std::ios::binary);
  if (!in) return;
  in.seekg(0, std::ios::end);
  if (static_cast<std::uint64_t>(std::max<std::streamoff>(in.tellg(), 0)) < offset_) offset_ = 0;  // started again
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
