// Where the repair VM finds its windows: the PCI slots the supervisor puts its ivshmem devices at
// (vmm/repair/repair_vm.cc, vmm/repair/shared_repair_vm.cc) and the agent maps them from
// (agent/repair_agent.cc). One table, so the two sides cannot disagree.
#pragma once

#include <cstdio>
#include <string>

namespace immortal::repair {

// A repair VM of one guest: the guest's RAM (only without the host's arena pool), the mailbox
// and the payload; every repair VM: the host pool's two arenas (kFirstArenaSlot and the next) and
// the host's files of the kernel image's symbols, the kernel's BTF and the image's ORC tables.
inline constexpr int kGuestRamSlot = 0x10, kMailboxSlot = 0x11, kPayloadSlot = 0x12, kFirstArenaSlot = 0x13,
                     kSymbolsSlot = 0x15, kTypesSlot = 0x16, kUnwindSlot = 0x17;
// A repair VM shared by the guests of one kernel, in place of one mailbox and one payload: slot
// k's mailbox is function k of kSlotMailboxSlot, its payload function k of kSlotPayloadSlot.
inline constexpr int kSharedSlots = 8, kSlotMailboxSlot = 0x18, kSlotPayloadSlot = 0x19;

// The window at slot.function as the agent maps it: its BAR 2, through sysfs.
inline std::string window_resource(int slot, int function = 0) {
  char path[64];
  std::snprintf(path, sizeof path, "/sys/bus/pci/devices/0000:00:%02x.%d/resource2", slot, function);
  return path;
}

}  // namespace immortal::repair
