// report.txt and `immortal diag BUNDLE`'s first screen: what crashed, where, who, what we did,
// rendered from report.json. The report may come from anywhere: missing or mistyped fields
// show as "?" and never stop the rendering.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace immortal::bundle {

// The one-screen summary (plus the crashing CPU's backtrace and every CPU's position).
std::string render_report(const nlohmann::json& report);

// A field as text wherever it sits: text(j, {"crash", "task", "comm"}); "" when absent.
std::string text_at(const nlohmann::json& j, std::initializer_list<const char*> path);

}  // namespace immortal::bundle
