// Guest-controlled text (a task's comm, the kernel log, the serial console, module names) on an
// operator's terminal: control characters and escape sequences would let a guest move the
// cursor, rewrite what was printed, retitle the window or worse. Everything that is not
// printable is shown as \xNN instead: C0 controls (tab and, where asked, newline excepted), DEL,
// and C1 controls as UTF-8 encodes them (C2 80..C2 9F). Other UTF-8 passes through.
#pragma once

#include <string>
#include <string_view>

namespace immortal {

std::string terminal_safe(std::string_view text, bool keep_newlines = false);

}  // namespace immortal
