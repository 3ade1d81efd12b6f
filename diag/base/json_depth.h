// How deeply JSON text nests, found without parsing it: answers from sandboxed agents are
// checked before nlohmann::json parses, dumps or renders them, which recurse on their depth.
#pragma once

#include <cstddef>
#include <string_view>

namespace immortal {

// The deepest nesting of arrays and objects in text (strings skipped; malformed text is left
// for the parser to refuse).
std::size_t json_nesting_depth(std::string_view text);

}  // namespace immortal
