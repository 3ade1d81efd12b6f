// Text put into XML or HTML (text and attribute values alike): the five characters markup gives
// a meaning escaped, everything else as it is. For file paths in a libvirt device definition and
// guest-derived strings in the campaign report.
#pragma once

#include <string>
#include <string_view>

namespace immortal {

std::string markup_escape(std::string_view text);

}  // namespace immortal
