#include "base/size.h"

#include "base/error.h"

#include <cctype>

namespace immortal {

std::uint64_t parse_size(const std::string& text, const std::string& option, const std::string& what) {
  auto bad = [&](const char* why) {
    fail(ExitCode::usage, "{}: invalid {} \"{}\": {} (examples: 512M, 2G; a bare number is MiB)", option, what, text, why);
  };
  std::size_t i = 0;
  std::uint64_t value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    if (value > (1ull << 50)) bad("too large");
    value = value * 10 + static_cast<std::uint64_t>(text[i] - '0');
    ++i;
  }
  if (i == 0) bad("it does not start with a number");
  std::string unit = text.substr(i);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.size() == 3 && unit.substr(1) == "IB") unit = unit.substr(0, 1);
  if (unit.size() == 2 && unit[1] == 'B') unit = unit.substr(0, 1);
  int shift = 0;
  if (unit.empty() || unit == "M") shift = 20;
  else if (unit == "K") shift = 10;
  else if (unit == "G") shift = 30;
  else if (unit == "T") shift = 40;
  else bad("unknown unit");
  if (value > (1ull << 50) >> shift) bad("too large (at most 1P)");
  return value << shift;
}

}  // namespace immortal
