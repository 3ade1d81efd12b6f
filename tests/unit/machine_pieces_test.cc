// Backend-independent pieces of the supervisor: sizes, RAM layout, shared RAM, instances.
#include "base/error.h"
#include "base/process_stat.h"
#include "cli/arguments.h"
#include "instance.h"
#include "memory/shared_ram.h"
#include "qemu/memory_tree.h"
#include "qemu/qemu_machine.h"

#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

using namespace immortal;
using namespace immortal::vmm;

TEST_CASE("memory sizes follow QEMU's notation", "[cli]") {
  CHECK(parse_memory_size("512M") == 512ull << 20);
  CHECK(parse_memory_size("512") == 512ull << 20);
  CHECK(parse_memory_size("2G") == 2ull << 30);
  CHECK(parse_memory_size("2GiB") == 2ull << 30);
  CHECK(parse_memory_size("1t") == 1ull << 40);
  for (const char* bad : {"", "M", "12Q", "-1G", "1.5G", "2T", "63M", "99999999999999999999G", "65537K"}) {
    INFO(bad);
    try {
      parse_memory_size(bad);
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == ExitCode::usage);
      CHECK_THAT(e.what(), Catch::Contains("invalid memory size"));
    }
  }
}

TEST_CASE("a guest's downtime on the hypervisor's clock is used only when its stamps fit around ours", "[machine]") {
  using namespace std::chrono;
  const auto t0 = steady_clock::now() - seconds(1);  // the supervisor asks to stop
  const auto stopped_by = t0 + milliseconds(2), resume_asked = t0 + milliseconds(12);
  // The stamps inside: from the stop stamp to the resume stamp.
  auto ms = hypervisor_downtime_ms(t0 + milliseconds(1), t0, stopped_by, t0 + milliseconds(13), resume_asked);
  REQUIRE(ms);
  CHECK(*ms == Approx(12.0));
  // A stop stamped just after the news of it reached us: the guest was stopped by then.
  ms = hypervisor_downtime_ms(stopped_by + milliseconds(1), t0, stopped_by, t0 + milliseconds(13), resume_asked);
  REQUIRE(ms);
  CHECK(*ms == Approx(11.0));
  // Missing, or out of place (an old stop, one far after ours, a resume before we asked for it,
  // one in the future): none of them is used.
  CHECK_FALSE(hypervisor_downtime_ms(std::nullopt, t0, stopped_by, t0 + milliseconds(13), resume_asked));
  CHECK_FALSE(hypervisor_downtime_ms(t0 + milliseconds(1), t0, stopped_by, std::nullopt, resume_asked));
  CHECK_FALSE(hypervisor_downtime_ms(t0 - milliseconds(1), t0, stopped_by, t0 + milliseconds(13), resume_asked));
  CHECK_FALSE(hypervisor_downtime_ms(stopped_by + milliseconds(101), t0, stopped_by, t0 + milliseconds(300), resume_asked));
  CHECK_FALSE(hypervisor_downtime_ms(t0 + milliseconds(1), t0, stopped_by, resume_asked - milliseconds(1), resume_asked));
  CHECK_FALSE(hypervisor_downtime_ms(t0 + milliseconds(1), t0, stopped_by, steady_clock::now() + seconds(5), resume_asked));
}

TEST_CASE("q35 places RAM around the PCI hole like QEMU", "[qemu]") {
  auto small = qemu::q35_ram_layout(512ull << 20);
  REQUIRE(small.size() == 1);
  CHECK(small[0].size == 512ull << 20);
  auto big = qemu::q35_ram_layout(4ull << 30);
  REQUIRE(big.size() == 2);
  CHECK(big[0].size == 2ull << 30);
  CHECK(big[1].guest_physical == 4ull << 30);
  CHECK(big[1].file_offset == 2ull << 30);
  CHECK(big[1].size == 2ull << 30);
  auto edge = qemu::q35_ram_layout(0xb0000000ull - (1 << 20));
  CHECK(edge.size() == 1);
}

TEST_CASE("shared RAM reads and writes by guest-physical address, and faults outside RAM", "[memory]") {
  const std::uint64_t size = 8 << 20;
  UniqueFd fd(::memfd_create("test-ram", MFD_CLOEXEC));
  REQUIRE(::ftruncate(fd.get(), size) == 0);
  // Two segments: 4 MiB at 0, 4 MiB at 16 MiB (file offset 4 MiB).
  SharedRamMemory ram(fd.get(), size, {{0, 0, 4 << 20}, {16 << 20, 4 << 20, 4 << 20}});
  REQUIRE(ram.ranges().size() == 2);
  CHECK(ram.total_size() == size);
  std::uint64_t value = 0x1122334455667788ull;
  ram.write((16 << 20) + 8, std::as_bytes(std::span(&value, 1)));
  CHECK(ram.read_value<std::uint64_t>((16 << 20) + 8) == value);
  std::uint64_t in_file = 0;
  REQUIRE(::pread(fd.get(), &in_file, 8, (4 << 20) + 8) == 8);
  CHECK(in_file == value);
  CHECK_THROWS_AS(ram.read_value<std::uint32_t>(5 << 20), MemoryFault);
  CHECK_THROWS_AS(ram.read_value<std::uint64_t>((4 << 20) - 4), MemoryFault);  // straddles the end
  CHECK_THROWS_AS(ram.read_value<std::uint64_t>(~0ull - 2), MemoryFault);
  CHECK_THROWS_AS(SharedRamMemory(fd.get(), size, {{0, 4 << 20, 8 << 20}}), Error);
}

TEST_CASE("instances are claimed once, and a dead one's name can be reused", "[instance]") {
  char tmpl[] = "/tmp/immortal-test-XXXXXX";
  REQUIRE(::mkdtemp(tmpl));
  std::string root = std::string(tmpl) + "/rt";
  {
    InstanceDir a = InstanceDir::claim(root, "alpha");
    CHECK(instance_running(root, "alpha"));
    CHECK(running_instances(root) == std::vector<std::string>{"alpha"});
    try {
      InstanceDir::claim(root, "alpha");
      FAIL("claimed twice");
    } catch (const Error& e) {
      CHECK_THAT(e.what(), Catch::Contains("already running"));
    }
  }
  CHECK_FALSE(instance_running(root, "alpha"));
  CHECK(running_instances(root).empty());
  InstanceDir again = InstanceDir::claim(root, "alpha");
  CHECK(instance_running(root, "alpha"));
  for (const char* bad : {"", ".x", "a/b", "a b", "012345678901234567890123456789012"}) {
    INFO(bad);
    CHECK_THROWS_AS(check_instance_name(bad), Error);
  }
  std::string cmd = std::string("rm -rf ") + tmpl;
  CHECK(std::system(cmd.c_str()) == 0);
}

TEST_CASE("guest RAM layout comes from QEMU's flat memory tree", "[machine]") {
  // As QEMU 7.2 printed it for a libvirt domain (pc-i440fx, 384 MiB), with an earlier view of
  // another address space that must be ignored, and a q35 guest above 4 GiB.
  const char* pc = "FlatView #0\n AS \"I/O\", root: io\n Root memory region: io\n  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\n"
                   "FlatView #1\n AS \"memory\", root: system\n AS \"cpu-memory-0\", root: system\n Root memory region: system\n"
                   "  0000000000000000-00000000000c2fff (prio 0, ram): pc.ram\n"
                   "  00000000000c3000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c3000\n"
                   "  00000000000e8000-00000000000effff (prio 0, ram): pc.ram @00000000000e8000\n"
                   "  00000000000f0000-00000000000fffff (prio 0, rom): pc.ram @00000000000f0000\n"
                   "  0000000000100000-0000000017ffffff (prio 0, ram): pc.ram @0000000000100000\n"
                   "  00000000fffc0000-00000000ffffffff (prio 0, romd): pc.bios\n"
                   "FlatView #2\n Root memory region: system\n  0000000000000000-0000000000000fff (prio 0, ram): pc.ram @0000000000555000\n";
  auto layout = qemu::ram_layout_from_memory_tree(pc, "pc.ram");
  REQUIRE(layout.size() == 1);
  CHECK(layout[0].guest_physical == 0);
  CHECK(layout[0].file_offset == 0);
  CHECK(layout[0].size == 384ull << 20);

  const char* q35 = "FlatView #0\n Root memory region: system\n"
                    "  0000000000000000-000000000009ffff (prio 0, ram): pc.ram\n"
                    "  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem\n"
                    "  00000000000c0000-000000007fffffff (prio 0, ram): pc.ram @00000000000c0000 KVM\n"
                    "  0000000100000000-000000017fffffff (prio 0, ram): pc.ram @0000000080000000 KVM\n";
  layout = qemu::ram_layout_from_memory_tree(q35, "pc.ram");
  REQUIRE(layout.size() == 3);
  CHECK(layout[1].guest_physical == 0xc0000);
  CHECK(layout[1].file_offset == 0xc0000);
  CHECK(layout[2].guest_physical == 4ull << 30);
  CHECK(layout[2].file_offset == 2ull << 30);
  CHECK(layout[2].size == 2ull << 30);

  for (std::string bad : {std::string(""), std::string("FlatView #0\n Root memory region: system\n"),
                          std::string(q35) + "  0000000000001000-0000000000001fff (prio 0, ram): pc.ram @0000000000001000\n",
                          std::string("FlatView #0\n Root memory region: system\n  0000000000002000-0000000000001fff (prio 0, ram): pc.ram\n"),
                          std::string("FlatView #0\n Root memory region: system\n  0000000000000000-0000000000001fff (prio 0, ram): pc.ram @ffffffffffffffff\n")}) {
    INFO(bad);
    CHECK_THROWS_AS(qemu::ram_layout_from_memory_tree(bad, "pc.ram"), Error);
  }
}

TEST_CASE("a process's state and start come from /proc/PID/stat; a zombie is not running", "[cli]") {
  auto self = immortal::process_stat(::getpid());
  REQUIRE(self);
  CHECK(self->state == 'R');
  CHECK(self->start_time > 0);
  CHECK(immortal::process_running(::getpid()));
  CHECK_FALSE(immortal::process_stat(0));
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) ::_exit(0);
  // Exited and not reaped yet: a zombie, not running.
  for (int i = 0; i < 2000 && immortal::process_running(child); ++i) ::usleep(1000);
  auto zombie = immortal::process_stat(child);
  REQUIRE(zombie);
  CHECK(zombie->state == 'Z');
  CHECK_FALSE(immortal::process_running(child));
  REQUIRE(::waitpid(child, nullptr, 0) == child);
  CHECK_FALSE(immortal::process_stat(child));  // reaped: gone
}
