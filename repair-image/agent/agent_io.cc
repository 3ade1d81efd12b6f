#include "agent/agent_io.h"

#include "base/error.h"

#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <vector>

namespace immortal::repair {

std::string read_all(int fd, std::size_t limit, const char* what) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_os(ExitCode::failure, fmt::format("read {}", what), errno);
    if (n == 0) return out;
    if (out.size() + static_cast<std::size_t>(n) > limit) fail(ExitCode::bad_input, "{} is larger than {} bytes", what, limit);
    out.append(buf, static_cast<std::size_t>(n));
  }
}

void write_all(int fd, const std::string& data) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_os(ExitCode::failure, "write the answer", errno);
    done += static_cast<std::size_t>(n);
  }
}

void agent_say(const std::string& line) {
  std::string out = "immortal-repair-agent: " + line + "\n";
  [[maybe_unused]] auto n = ::write(2, out.data(), out.size());
}

char doorbell_byte(int fd) {
  for (;;) {
    char c = 0;
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    return n == 1 ? c : 0;
  }
}

std::uint64_t request_number(const nlohmann::json& request, const char* key) {
  auto v = request.find(key);
  if (v == request.end() || !v->is_number_unsigned()) fail(ExitCode::bad_input, "the request's {} is not a number", key);
  return v->get<std::uint64_t>();
}

std::unique_ptr<SharedRamMemory> map_request_ram(const nlohmann::json& request, int fd) {
  std::vector<RamSegment> segments;
  for (const auto& s : request.value("ram", nlohmann::json::array()))
    segments.push_back({request_number(s, "guest_physical"), request_number(s, "file_offset"), request_number(s, "size")});
  return std::make_unique<SharedRamMemory>(fd, request_number(request, "ram_size"), segments, /*writable=*/false);
}

}  // namespace immortal::repair
