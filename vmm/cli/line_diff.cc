#include "cli/line_diff.h"

#include <fmt/format.h>

#include <algorithm>
#include <sstream>
#include <vector>

namespace immortal::vmm {

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

struct Op {
  char kind;  // ' ', '-', '+'
  std::size_t a, b;  // line index in before / after (the one that applies)
};

// Longest common subsequence by dynamic programming: domain definitions have hundreds of lines.
std::vector<Op> edit_script(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<Op> ops;
  if (a.size() > 20000 || b.size() > 20000) {
    for (std::size_t i = 0; i < a.size(); ++i) ops.push_back({'-', i, 0});
    for (std::size_t j = 0; j < b.size(); ++j) ops.push_back({'+', a.size(), j});
    return ops;
  }
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<std::uint32_t>> lcs(n + 1, std::vector<std::uint32_t>(m + 1, 0));
  for (std::size_t i = n; i-- > 0;)
    for (std::size_t j = m; j-- > 0;)
      lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
  std::size_t i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] == b[j]) {
      ops.push_back({' ', i++, j++});
    } else if (i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1])) {
      ops.push_back({'-', i++, j});  // removals before additions, as diff -u prints them
    } else {
      ops.push_back({'+', i, j++});
    }
  }
  return ops;
}

}  // namespace

std::string unified_diff(const std::string& before, const std::string& after, const std::string& before_name,
                         const std::string& after_name, int context) {
  auto a = lines_of(before), b = lines_of(after);
  auto ops = edit_script(a, b);
  std::string out;
  const std::size_t count = ops.size(), reach = static_cast<std::size_t>(std::max(context, 0));
  std::size_t k = 0;
  while (k < count) {
    if (ops[k].kind == ' ') {
      ++k;
      continue;
    }
    // A hunk: from `reach` lines before this change to `reach` after the last change that is
    // within 2 * reach unchanged lines of the previous one.
    std::size_t start = k >= reach ? k - reach : 0;
    std::size_t last_change = k;
    for (std::size_t t = k; t < count; ++t) {
      if (ops[t].kind != ' ') last_change = t;
      else if (t - last_change > 2 * reach) break;
    }
    std::size_t end = std::min(count, last_change + 1 + reach);
    std::size_t a_start = ops[start].a, b_start = ops[start].b, a_len = 0, b_len = 0;
    std::string body;
    for (std::size_t t = start; t < end; ++t) {
      const Op& op = ops[t];
      if (op.kind != '+') ++a_len;
      if (op.kind != '-') ++b_len;
      body += op.kind;
      body += op.kind == '+' ? b[op.b] : a[op.a];
      body += '\n';
    }
    if (out.empty()) out = fmt::format("--- {}\n+++ {}\n", before_name, after_name);
    out += fmt::format("@@ -{},{} +{},{} @@\n", a_len ? a_start + 1 : a_start, a_len, b_len ? b_start + 1 : b_start, b_len);
    out += body;
    k = end;
  }
  return out;
}

}  // namespace immortal::vmm
