// Unquarantine: a function's original bytes go back only while the patch is still there, and a
// module pinned by `--quarantine driver` loses its extra reference with its last function, only
// while its struct module (where the pin found it) still names it and is live: read at known
// places, no list of the guest walked.
#include "recovery/quarantine.h"

#include "kernel/kernel.h"

#include "support/fake_kernel.h"
#include "support/fake_machine.h"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>

using namespace immortal;
using namespace immortal::test;

namespace {

constexpr std::uint64_t kModulePhys = 0x500000;  // struct module
constexpr std::uint64_t kRefcnt = 0x300;         // its refcnt (the test's layout)
constexpr std::uint64_t kFunctionPhys = 0x600000;

std::vector<std::uint8_t> u32_bytes(std::uint32_t v) {
  std::vector<std::uint8_t> b(4);
  std::memcpy(b.data(), &v, 4);
  return b;
}

struct PinnedDriver {
  FakeMachine machine{1, 8 << 20};
  std::string path = (std::filesystem::temp_directory_path() / ("immortal-quarantine-" + std::to_string(::getpid()) + ".json")).string();
  vmm::QuarantineList quarantine{path};
  std::unique_ptr<Kernel> kernel;
  std::vector<std::uint8_t> original{0x55, 0x48, 0x89, 0xe5}, patch{0xb8, 0xfb, 0xff, 0xc3};

  PinnedDriver() {
    map_kernel_image(machine.ram());
    auto types = linux_like_types();
    types->add("module", "refcnt", kRefcnt, 4);
    kernel = Kernel::assemble(machine.ram(), KernelLayout{0x1000, false, 0, 0, 0},
                              SymbolTable::from_kallsyms("ffffffff81000000 T _stext\n"), std::move(types), "6.1.0-test");
    machine.ram().put_bytes(kModulePhys + 0x18, std::string("drv") + '\0');  // module.name
    machine.ram().put<std::uint32_t>(kModulePhys, 0);                       // MODULE_STATE_LIVE
    machine.ram().put<std::uint32_t>(kModulePhys + kRefcnt, 2);              // 1 + our pin
    machine.ram().put_bytes(kFunctionPhys, std::string(patch.begin(), patch.end()));
    repair::RepairPlan plan;
    repair::RepairAction q{"quarantine-function", "test", {{kva(kFunctionPhys), original, patch, true}}, {}, {}, {}};
    q.detail = {{"module", "drv"}, {"function", "drv_write"}};
    repair::RepairAction pin{"pin-module", "test", {{kva(kModulePhys + kRefcnt), u32_bytes(1), u32_bytes(2), false}}, {}, {}, {}};
    pin.detail = {{"module", "drv"}};
    plan.actions = {q, pin};
    quarantine.add(plan, 1, "now");
    REQUIRE(quarantine.pins().size() == 1);
  }
  ~PinnedDriver() { std::filesystem::remove(path); }
  std::uint32_t refcnt() { return machine.ram().read_value<std::uint32_t>(kModulePhys + kRefcnt); }
};

}  // namespace

TEST_CASE("unquarantine drops a pin only while the pinned struct module is still the driver's", "[quarantine]") {
  PinnedDriver d;
  SECTION("the same module: restored and unpinned") {
    auto done = d.quarantine.release(d.machine, *d.kernel, {});
    CHECK(done.at(0) == "drv_write [drv]: restored");
    CHECK(done.at(1) == "module drv: unpinned (it can be unloaded again)");
    CHECK(d.refcnt() == 1);
    CHECK(d.machine.ram().read_value<std::uint32_t>(kFunctionPhys) == 0xe5894855u);  // the original bytes
    CHECK(d.quarantine.empty());
  }
  SECTION("reloaded: its memory now holds another module") {
    d.machine.ram().put_bytes(kModulePhys + 0x18, std::string("other") + '\0');
    auto done = d.quarantine.release(d.machine, *d.kernel, {});
    CHECK(done.at(1) == "module drv: reloaded since it was pinned; forgotten");
    CHECK(d.refcnt() == 2);
  }
  SECTION("going away (not live)") {
    d.machine.ram().put<std::uint32_t>(kModulePhys, 2);  // MODULE_STATE_GOING
    auto done = d.quarantine.release(d.machine, *d.kernel, {});
    CHECK(done.at(1) == "module drv: reloaded since it was pinned; forgotten");
    CHECK(d.refcnt() == 2);
  }
  SECTION("a name without its NUL is compared within MODULE_NAME_LEN, never read beyond") {
    d.machine.ram().put_bytes(kModulePhys + 0x18, std::string(56, 'd'));
    auto done = d.quarantine.release(d.machine, *d.kernel, {});
    CHECK(done.at(1) == "module drv: reloaded since it was pinned; forgotten");
  }
}
