// What panic() prints before a kdump vmcore is taken — "Kernel panic - not syncing: MESSAGE" —
// for a crash stopped at panic()'s first instruction, which has printed nothing yet. A bundle's
// vmcore gets this record so that dump readers (crash's `log`, drgn) show the panic as they do
// in any kdump vmcore; docs/bundle-format.md lists it as an adjustment.
#pragma once

#include "kernel/kernel.h"
#include "x86_64/registers.h"

#include <cstdint>
#include <string>
#include <vector>

namespace immortal {

// The longest line append_log_record is given for panic(): the prefix and a message of
// format_panic_message's bound (1024 bytes, overrun by at most one conversion).
inline constexpr std::size_t kMaxPanicLine = 1024 + 128;

// panic(fmt, ...)'s message formatted as the kernel's vsnprintf would, from the registers at
// panic()'s first instruction (fmt in rdi, the first five arguments in rsi, rdx, rcx, r8, r9).
// Guest strings are read bounded and made printable.
std::string format_panic_message(const Kernel& kernel, const X86Registers& at_panic);

// Appends a finalized record (level 0, KERN_EMERG) after the newest one in the printk ring of
// `memory` (the memory kernel reads; it must be writable: a snapshot). Only when the ring has
// room without overwriting a record or wrapping; otherwise returns false and says why.
bool append_log_record(const Kernel& kernel, PhysicalMemory& memory, const std::string& text, std::uint32_t caller_id,
                       std::string* why);

// The guest-physical pages append_log_record would write for a text of up to max_text bytes
// (the next descriptor, its info and its data block; the ring's heads are in pages that are
// never all zeros): a snapshot keeps them even when they are all zeros (never used since boot),
// which it otherwise leaves out and cannot write. Empty when the ring cannot be read.
std::vector<std::uint64_t> log_append_pages(const Kernel& kernel, std::size_t max_text);

}  // namespace immortal
