// A unified diff of two texts, line by line (what `immortal prepare` shows before it changes a
// domain's definition, as `virsh edit` users would read it).
#pragma once

#include <string>

namespace immortal::vmm {

// Lines only in `before` start with "-", only in `after` with "+", `context` unchanged lines
// around each change with " "; hunks start with "@@ -a,b +c,d @@". Empty when equal. Texts of
// more than 20 000 lines are shown whole, as removed then added.
std::string unified_diff(const std::string& before, const std::string& after, const std::string& before_name,
                         const std::string& after_name, int context = 3);

}  // namespace immortal::vmm
