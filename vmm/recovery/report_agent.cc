#include "recovery/report_agent.h"

#include "base/budgets.h"
#include "base/error.h"
#include "base/io.h"
#include "base/json_depth.h"
#include "base/sealed_memfd.h"
#include "base/terminal_text.h"
#include "repair/agent_process.h"
#include "report/kernel_json.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <thread>

namespace immortal::vmm {

using nlohmann::json;

namespace {

constexpr std::size_t kMaxDepth = 64;         // the report's own shape is a dozen levels deep
constexpr std::size_t kMaxStrings = 256;      // problems, adjustments
constexpr std::size_t kMaxStringBytes = 4096;
constexpr std::uint64_t kKernelHalf = 0xffff800000000000ull;
constexpr std::uint64_t kKernelImageBase = 0xffffffff80000000ull;  // __START_KERNEL_map
constexpr std::uint64_t kKernelImageMax = 1ull << 30;              // KERNEL_IMAGE_SIZE

std::vector<std::string> strings_of(const json& j, const char* what, std::vector<std::string>& problems) {
  std::vector<std::string> out;
  if (j.is_null()) return out;
  if (!j.is_array()) {
    problems.push_back(fmt::format("the report agent's {} are not a list", what));
    return out;
  }
  for (const auto& s : j) {
    if (out.size() == kMaxStrings) {
      problems.push_back(fmt::format("the report agent gave more than {} {}: the rest left out", kMaxStrings, what));
      break;
    }
    if (s.is_string()) out.push_back(s.get<std::string>().substr(0, kMaxStringBytes));
  }
  return out;
}

std::optional<std::uint64_t> hex_number(const json& j) {
  if (!j.is_string()) return std::nullopt;
  const std::string& s = j.get_ref<const std::string&>();
  if (s.size() < 3 || s.size() > 18 || s[0] != '0' || s[1] != 'x') return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 2; i < s.size(); ++i) {
    int d = std::isdigit(static_cast<unsigned char>(s[i])) ? s[i] - '0'
            : (s[i] >= 'a' && s[i] <= 'f')                 ? s[i] - 'a' + 10
                                                           : -1;
    if (d < 0) return std::nullopt;
    v = v << 4 | static_cast<std::uint64_t>(d);
  }
  return v;
}

std::optional<std::string> hex_bytes(const json& j) {
  if (!j.is_string()) return std::nullopt;
  const std::string& s = j.get_ref<const std::string&>();
  if (s.empty() || s.size() % 2) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < s.size(); i += 2) {
    auto nibble = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1; };
    int hi = nibble(s[i]), lo = nibble(s[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

// The changes the agent made to its copy, made to ours: all of them, or none with the reason.
void apply_writes(const json& writes, MemorySnapshot& snapshot, ReportParts& parts, std::vector<std::string> adjustments) {
  if (writes.is_null() || (writes.is_array() && writes.empty())) {
    if (!adjustments.empty()) parts.problems.push_back("the report agent described changes it did not ask for: none made");
    return;
  }
  auto refuse = [&](const std::string& why) {
    parts.problems.push_back("the report agent's changes to the snapshot were refused (" + why + "): none made");
  };
  if (!writes.is_array()) return refuse("not a list");
  if (writes.size() > budget::kReportWrites) return refuse(fmt::format("{} of them, at most {}", writes.size(), budget::kReportWrites));
  std::vector<std::pair<std::uint64_t, std::string>> checked;
  std::size_t total = 0;
  for (const auto& w : writes) {
    if (!w.is_object()) return refuse("a change that is not an object");
    auto paddr = hex_number(w.contains("paddr") ? w["paddr"] : json());
    auto bytes = hex_bytes(w.contains("hex") ? w["hex"] : json());
    if (!paddr || !bytes) return refuse("a change without an address or bytes");
    total += bytes->size();
    if (total > budget::kReportWriteBytes) return refuse(fmt::format("more than {} bytes", budget::kReportWriteBytes));
    if (*paddr + bytes->size() < *paddr) return refuse("an address that wraps");
    // Only pages the snapshot copied: nothing else of it exists to change.
    for (std::uint64_t page = *paddr & ~(MemorySnapshot::kPageSize - 1); page < *paddr + bytes->size(); page += MemorySnapshot::kPageSize)
      if (!snapshot.page_data(page)) return refuse(fmt::format("{:#x} is not a copied page", page));
    checked.emplace_back(*paddr, std::move(*bytes));
  }
  for (const auto& [paddr, bytes] : checked)
    snapshot.write(paddr, std::as_bytes(std::span(bytes.data(), bytes.size())));
  parts.adjustments = std::move(adjustments);
}

VmcoreLayout layout_of(const json& j, std::vector<std::string>& problems) {
  VmcoreLayout l;
  if (!j.is_object()) return l;
  auto number = [&](const char* key) { return j.contains(key) && j[key].is_number_unsigned() ? j[key].get<std::uint64_t>() : 0; };
  l.page_offset_base = number("page_offset_base");
  l.kernel_vaddr = number("kernel_vaddr");
  l.kernel_paddr = number("kernel_paddr");
  l.kernel_size = number("kernel_size");
  bool direct_map_ok = l.page_offset_base == 0 || (l.page_offset_base >= kKernelHalf && !(l.page_offset_base & 0xfff));
  bool image_ok = l.kernel_size == 0 ||
                  (l.kernel_vaddr >= kKernelImageBase && l.kernel_size <= kKernelImageMax && !(l.kernel_size & 0xfff) &&
                   !(l.kernel_paddr & 0xfff) && l.kernel_paddr + l.kernel_size > l.kernel_paddr &&
                   l.kernel_vaddr + l.kernel_size > l.kernel_vaddr);
  if (!direct_map_ok || !image_ok) {
    problems.push_back(fmt::format("the report agent's kernel layout is impossible (direct map {:#x}, image {:#x}+{:#x} at {:#x}): "
                                   "the vmcore has physical addresses only", l.page_offset_base, l.kernel_vaddr, l.kernel_size, l.kernel_paddr));
    return {};
  }
  return l;
}

}  // namespace

ReportParts accept_report_answer(std::string_view answer, MemorySnapshot& snapshot, std::size_t vcpus) {
  ReportParts parts;
  parts.pids.assign(vcpus, 0);
  if (answer.size() > budget::kReportAnswerBytes) {
    parts.problems.push_back(fmt::format("the report agent's answer is larger than {} bytes", budget::kReportAnswerBytes));
    return parts;
  }
  if (json_nesting_depth(answer) > kMaxDepth) {
    parts.problems.push_back(fmt::format("the report agent's answer is nested deeper than {}", kMaxDepth));
    return parts;
  }
  json a = json::parse(answer, nullptr, false);
  if (a.is_discarded() || !a.is_object()) {
    parts.problems.push_back("the report agent's answer is not a JSON object");
    return parts;
  }
  auto field = [&](const char* key) { return a.contains(key) ? a[key] : json(); };
  parts.problems = strings_of(field("problems"), "problems", parts.problems);
  apply_writes(field("writes"), snapshot, parts, strings_of(field("adjustments"), "adjustments", parts.problems));
  if (a.contains("taint") && a["taint"].is_string() && a["taint"].get_ref<const std::string&>().size() <= 64) parts.taint = a["taint"];
  if (json log = field("log"); log.is_object() && log.contains("records") && log["records"].is_array()) {
    try {
      parts.dmesg = render_kernel_log(log["records"]);
      parts.log = {{"records", log["records"]},
                   {"panic_message", log.contains("panic_message") && log["panic_message"].is_string() ? log["panic_message"] : json("")}};
    } catch (const std::exception& e) {
      parts.problems.push_back(std::string("the report agent's kernel log is malformed: ") + e.what());
    }
  }
  if (json cpus = field("cpus"); cpus.is_array()) {
    if (cpus.size() != vcpus) {
      parts.problems.push_back(fmt::format("the report agent described {} CPUs, the guest has {}", cpus.size(), vcpus));
    } else {
      for (std::size_t i = 0; i < vcpus; ++i)
        parts.cpus.push_back(cpus[i].is_object() ? cpus[i] : json{{"cpu", i}});
      for (std::size_t i = 0; i < vcpus; ++i) parts.cpus[i]["cpu"] = i;  // by position, whatever it said
    }
  }
  if (json pids = field("pids"); pids.is_array() && pids.size() == vcpus)
    for (std::size_t i = 0; i < vcpus; ++i)
      if (pids[i].is_number_integer() && pids[i].get<std::int64_t>() >= 0 && pids[i].get<std::int64_t>() <= (1 << 22))
        parts.pids[i] = pids[i].get<int>();
  parts.layout = layout_of(field("layout"), parts.problems);
  if (json analysis = field("analysis"); analysis.is_object()) parts.analysis = analysis;
  return parts;
}

ReportParts read_report_parts(const std::string& agent, MemorySnapshot& snapshot, const std::string& profile_dir,
                              const json& request, std::chrono::seconds timeout) {
  std::size_t vcpus = 0;
  if (request.contains("record") && request["record"].contains("registers")) vcpus = request["record"]["registers"].size();
  auto failed = [&](const std::string& why) {
    ReportParts p;
    p.pids.assign(vcpus, 0);
    p.problems.push_back("the report's kernel details are missing: " + why);
    return p;
  };
  // Descriptors for the agent: the request and the index in sealed memfds, the pages read-only.
  UniqueFd pages;
  if (snapshot.pages_fd() >= 0) pages = reopen_read_only(snapshot.pages_fd());
  if (!pages) return failed("the snapshot's pages cannot be shared");
  UniqueFd request_fd, index_fd, log_fd;
  int out_pipe[2];
  try {
    request_fd = sealed_memfd_with("immortal-report-request", request.dump(-1, ' ', false, json::error_handler_t::replace));
    index_fd = sealed_memfd_with("immortal-report-index", snapshot.index());
    log_fd = agent_log_memfd("immortal-report-log");
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) fail_os(ExitCode::failure, "pipe", errno);
  } catch (const std::exception& e) {
    return failed(e.what());
  }
  UniqueFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  pid_t pid = -1;
  try {
    pid = start_agent_process({agent, "--report", "--profile", profile_dir},
                              {request_fd.get(), out_write.get(), log_fd.get(), pages.get(), index_fd.get()});
  } catch (const std::exception& e) {
    return failed(e.what());
  }
  out_write.reset();
  std::string answer;
  std::string why;
  auto deadline = Deadline::in(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
  for (;;) {
    if (!wait_readable(out_read.get(), deadline)) {
      why = fmt::format("the report agent took longer than {} s: killed", timeout.count());
      break;
    }
    std::string chunk = read_some(out_read.get(), 1 << 20);
    if (chunk.empty()) break;
    answer += chunk;
    if (answer.size() > budget::kReportAnswerBytes) {
      why = fmt::format("the report agent's answer is larger than {} bytes: killed", budget::kReportAnswerBytes);
      break;
    }
  }
  // Its exit, within the same deadline: an agent that closed its answer and lingers is killed.
  int status = 0;
  if (why.empty()) {
    pid_t reaped = 0;
    while ((reaped = ::waitpid(pid, &status, WNOHANG)) == 0 && !deadline.expired()) ::poll(nullptr, 0, 5);
    if (reaped == pid) pid = -1;
    else why = fmt::format("the report agent did not exit within {} s: killed", timeout.count());
  }
  if (pid > 0) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (why.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    // Its last words (its log is a memfd under its RLIMIT_FSIZE: read back only the end).
    std::string said = last_log_line(log_fd.get());
    why = "the report agent " + (WIFEXITED(status) && WEXITSTATUS(status) == 127 ? agent + " " : std::string()) +
          agent_ending(status) + (WIFEXITED(status) && !said.empty() ? ": " + said : "");
  }
  if (!why.empty()) return failed(why);
  return accept_report_answer(answer, snapshot, vcpus);
}

}  // namespace immortal::vmm
