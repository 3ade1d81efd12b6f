#include "base/terminal_text.h"

#include <fmt/format.h>

namespace immortal {

std::string terminal_safe(std::string_view text, bool keep_newlines) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    bool control = (c < 0x20 && c != '\t' && !(keep_newlines && c == '\n')) || c == 0x7f;
    // C1 controls are U+0080..U+009F, C2 80..C2 9F in UTF-8 (a terminal in UTF-8 mode takes a
    // lone 0x80..0x9F byte for a broken sequence, not a control).
    if (c == 0xc2 && i + 1 < text.size()) {
      auto next = static_cast<unsigned char>(text[i + 1]);
      if (next >= 0x80 && next <= 0x9f) {
        out += fmt::format("\\x{:02x}\\x{:02x}", c, next);
        ++i;
        continue;
      }
    }
    if (control)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  return out;
}

}  // namespace immortal
