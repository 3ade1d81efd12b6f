// Fuzz target: the supervisor's check of a repair plan (vmm/recovery/plan_validation). The plan
// comes from a repair agent that parsed a crashed, possibly hostile guest — the agent may be
// subverted — and the guest's memory it is checked against is the guest's to write. Input: the
// plan's JSON, a NUL, then the bytes of the crashing CPU's per-CPU area and of a lock's page.
// validate_plan() must accept or refuse (Error), never crash, loop or overflow an address range.
#include "base/error.h"
#include "engine/healthy_image.h"
#include "engine/repair_plan.h"
#include "recovery/plan_validation.h"
#include "support/fake_kernel.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>

using namespace immortal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static test::VectorMemory ram(4 << 20);
  static std::unique_ptr<Kernel> kernel = [] {
    test::map_kernel_image(ram);
    return Kernel::assemble(ram, KernelLayout{0x1000},
                            SymbolTable::from_kallsyms("ffffffff80100000 T _stext\nffffffff80100000 T func\n"
                                                       "ffffffff80100040 T other\nffffffff80101000 T _etext\n"
                                                       "ffffffff80100080 T wake_up_state\n"
                                                       "ffffffff801000c0 T ct_nmi_exit\n"
                                                       "ffffffff80100100 T release_sock\n"
                                                       "ffffffff80100140 T mutex_unlock\n"
                                                       "ffffffff80100180 T up\n"
                                                       "ffffffff801001c0 T napi_complete_done\n"
                                                       "ffffffff80100200 T rewind_stack_and_make_dead\n"
                                                       "0000000000000010 D __preempt_count\n"
                                                       "0000000000000020 D current_task\n"
                                                       "0000000000000030 D __irq_regs\n"
                                                       "ffffffff80200000 D tainted_mask\n"
                                                       "ffffffff80200010 b hung_task_call_panic\n"),
                            test::linux_like_types(), "fuzz");
  }();
  static const repair::HealthyImage healthy = [] {
    repair::HealthyImage h;
    h.regions.push_back(repair::HealthyRegion::holding("drv text", "text", "drv", 0xffffffffc0001000, std::vector<std::uint8_t>(0x100, 0x90)));
    h.regions.push_back(repair::HealthyRegion::holding("kernel text", "text", "", test::kva(0x100000), std::vector<std::uint8_t>(0x1000, 0x90)));
    h.modules.push_back({"drv", 0xffffffffc0001000, 0x2000, 0x100, {{0xffffffffc0001100, 0xffffffffc0003000}}});
    return h;
  }();
  const std::uint8_t* end = data + size;
  const std::uint8_t* nul = std::find(data, end, std::uint8_t{0});
  auto j = nlohmann::json::parse(data, nul, nullptr, false);
  if (j.is_discarded()) return 0;
  // The guest memory the checks read: the per-CPU area at 0x300000 and a lock page at 0x310000.
  std::vector<std::byte> zero(0x2000);
  ram.write(0x300000, zero);
  ram.write(0x310000, zero);
  if (nul != end) {
    std::size_t n = std::min<std::size_t>(static_cast<std::size_t>(end - nul - 1), 0x2000);
    ram.write(0x300000, std::as_bytes(std::span(nul + 1, std::min<std::size_t>(n, 0x1000))));
    if (n > 0x1000) ram.write(0x310000, std::as_bytes(std::span(nul + 1 + 0x1000, n - 0x1000)));
  }
  try {
    repair::RepairPlan plan = repair::plan_from_json(j.is_object() && j.contains("plan") ? j["plan"] : j);
    vmm::PlanContext context{1, "drv", test::kva(0x300000), healthy.modules[0]};
    vmm::validate_plan(plan, context, *kernel, &healthy);
    vmm::validate_plan(plan, context, *kernel, nullptr);
  } catch (const Error&) {
  } catch (const MemoryFault&) {
  }
  return 0;
}
