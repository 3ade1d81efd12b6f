#include "campaign/guest_files.h"

#include "base/error.h"
#include "campaign/fault_inject_scripts.h"
#include "protocol/base64.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>

namespace immortal::vmm {

bool valid_guest_file_name(const std::string& name) {
  return !name.empty() && name.size() <= 100 && name[0] != '.' &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
         });
}

std::uint64_t guest_file_size(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail(ExitCode::bad_input, "\"{}\" is not a regular file", path);
  auto size = std::filesystem::file_size(path, ec);
  if (ec || ::access(path.c_str(), R_OK) != 0) fail(ExitCode::bad_input, "cannot read \"{}\"", path);
  if (size > kMaxGuestFileBytes) fail(ExitCode::bad_input, "\"{}\" is larger than {} MiB", path, kMaxGuestFileBytes >> 20);
  return size;
}

std::string read_guest_file(const std::string& path) {
  auto size = guest_file_size(path);
  std::ifstream in(path, std::ios::binary);
  std::string bytes(size, '\0');
  if (!in || !in.read(bytes.data(), static_cast<std::streamsize>(size)) || in.peek() != std::char_traits<char>::eof())
    fail(ExitCode::bad_input, "cannot read \"{}\" whole (is it changing?)", path);
  return bytes;
}

std::vector<GuestShellCommand> guest_file_commands(const std::string& dir, const std::string& name, const std::string& bytes,
                                                   std::size_t chunk) {
  chunk = std::max<std::size_t>(3, chunk / 3 * 3);  // whole base64 quanta: the pieces concatenate
  std::string partial = shell_quote(dir + "/." + name + ".partial"), whole = shell_quote(dir + "/" + name);
  std::vector<GuestShellCommand> commands;
  // An empty file still gets its first command (it creates the file).
  for (std::size_t at = 0; at == 0 || at < bytes.size(); at += chunk) {
    std::string text = agent::base64_encode(std::string_view(bytes).substr(at, std::min(chunk, bytes.size() - at)));
    GuestShellCommand c;
    // printf reuses its format for every argument: the arguments, concatenated, decoded.
    c.script = fmt::format("{}printf '%s' \"$@\" | base64 -d {} {}", at == 0 ? fmt::format("mkdir -p {} && ", shell_quote(dir)) : "",
                           at == 0 ? ">" : ">>", partial);
    for (std::size_t i = 0; i < text.size(); i += kGuestArgBytes) c.args.push_back(text.substr(i, kGuestArgBytes));
    commands.push_back(std::move(c));
  }
  commands.back().script +=
      fmt::format(" && [ \"$(wc -c < {0})\" -eq {1} ] && chmod 0644 {0} && mv -f {0} {2}", partial, bytes.size(), whole);
  return commands;
}

}  // namespace immortal::vmm
