// Base64 (RFC 4648, with padding) for command output carried in JSON, which must be UTF-8.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace immortal::agent {

std::string base64_encode(std::string_view bytes);
// nullopt for anything that is not canonical base64.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace immortal::agent
