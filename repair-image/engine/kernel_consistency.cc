#include "engine/kernel_consistency.h"

#include "kernel/modules.h"
#include "kernel/tasks.h"

#include <fmt/format.h>

namespace immortal::repair {

namespace {

constexpr std::size_t kConsistencyMaxTasks = 1 << 20;  // Linux's PID_MAX_LIMIT is 4 Mi; 1 Mi tasks is plenty
constexpr std::uint64_t kMaxModuleSize = 1ull << 30;

bool printable_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name)
    if (c < 0x21 || c > 0x7e) return false;
  return true;
}

// The printk ring's geometry is fixed at boot (setup_log_buf): its data ring holds log_buf_len
// bytes (2^size_bits) and its descriptor ring 2^(size_bits - PRB_AVGBITS) records, PRB_AVGBITS
// being 5 from 5.10 to 6.12; the records between tail and head fit in it. A ring that says
// otherwise was overwritten: printk, which every oops and warning runs, would read and write
// through it. Empty when it holds or cannot be told (no prb).
std::string printk_ring_problem(const Kernel& kernel) {
  auto prb = kernel.symbols().address_of("prb");
  if (!prb) return {};
  const auto& m = kernel.memory();
  const auto& t = kernel.types();
  std::uint64_t rb = m.read_u64(*prb);
  std::uint64_t desc_ring = rb + t.offset_of("printk_ringbuffer", "desc_ring");
  std::uint64_t data_ring = rb + t.offset_of("printk_ringbuffer", "text_data_ring");
  auto count_bits = m.read_value<std::uint32_t>(desc_ring + t.offset_of("prb_desc_ring", "count_bits"));
  auto size_bits = m.read_value<std::uint32_t>(data_ring + t.offset_of("prb_data_ring", "size_bits"));
  constexpr std::uint64_t kIdMask = ~(3ull << 62);
  std::uint64_t live = (m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "head_id")) -
                        m.read_u64(desc_ring + t.offset_of("prb_desc_ring", "tail_id"))) & kIdMask;
  if (size_bits >= 64 || count_bits >= 64 || size_bits != count_bits + 5 || live >= (1ull << count_bits))
    return fmt::format("the printk ring's geometry is not the kernel's ({} descriptor bits, {} data bits, {} records "
                       "between tail and head)", count_bits, size_bits, live);
  if (auto len = kernel.symbols().address_of("log_buf_len"))
    if (auto bytes = m.read_value<std::uint32_t>(*len); bytes != (1ull << size_bits))
      return fmt::format("the printk ring's data ring is {} bytes, log_buf_len says {}", 1ull << size_bits, bytes);
  return {};
}

}  // namespace

std::vector<std::string> check_kernel_consistency(const Kernel& kernel) {
  std::vector<std::string> problems;
  try {
    TaskList tasks = read_tasks(kernel, kConsistencyMaxTasks);
    if (!tasks.walk.complete) problems.push_back("the task list is damaged: " + tasks.walk.problem);
  } catch (const std::exception& e) {
    problems.push_back(std::string("the task list is unreadable: ") + e.what());
  }
  try {
    std::uint64_t name_size = kernel.types().require_field("module", "name").size;
    ModuleList mods = read_modules(kernel);
    if (!mods.walk.complete) problems.push_back("the module list is damaged: " + mods.walk.problem);
    for (const auto& m : mods.modules) {
      if (!printable_name(m.name) || m.name.size() >= name_size)
        problems.push_back(fmt::format("the module at {:#x} has no proper name", m.address));
      else if (m.state == "live" && (m.size > kMaxModuleSize || m.text_size > m.size || !m.layout_sane ||
                                     m.base + m.size < m.base))
        problems.push_back(fmt::format("module {} has an impossible layout (size {:#x}, text {:#x}, read-only end {:#x})",
                                       m.name, m.size, m.text_size, m.rodata.end ? m.rodata.end - m.base : 0));
      if (problems.size() > 8) break;
    }
  } catch (const std::exception& e) {
    problems.push_back(std::string("the module list is unreadable: ") + e.what());
  }
  try {
    if (auto p = printk_ring_problem(kernel); !p.empty()) problems.push_back(p);
  } catch (const std::exception& e) {
    problems.push_back(std::string("the printk ring is unreadable: ") + e.what());
  }
  return problems;
}

}  // namespace immortal::repair
